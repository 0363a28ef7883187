//! When the ingester maintains the tables it writes: `[ingest.maintenance]`
//! and the [`Maintainer`] that keeps each table's cadence.
//!
//! Rules kept here:
//! - Maintenance runs in the ingest task, between batches, on the tables the
//!   batch just committed: the table's one writer does it, under its lease,
//!   so it never races ingest and never makes ingest wait on a lock.
//! - A failure is logged and counted, and tried again at the next turn;
//!   ingest goes on. The exception is a refusal of the commit coordinator
//!   no retry cures (a missing privilege): ingest needs that database too,
//!   so the error stops the ingester.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tributary_model::error_chain;

use super::operations::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_RETENTION_HOURS, DEFAULT_TARGET_FILE_SIZE, OptimizeOptions,
    VacuumOptions, checkpoint, optimize, vacuum,
};
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
    DEFAULT_TARGET_FILE_SIZE
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
    DEFAULT_MAX_ATTEMPTS
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
    /// due. Errors are logged, except a refusal of the commit coordinator
    /// that no retry cures ([`Error::is_coordinator_refusal`]): ingest needs
    /// that database too, so it is returned and stops the ingester.
    pub async fn after_batch(&mut self, lake: &Lake, table: &str) -> Result<()> {
        if !self.config.enabled {
            return Ok(());
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
                self.optimize_one(lake, layer, table).await?;
            }
            if checkpoint_due {
                self.checkpoint_one(lake, layer, table).await?;
            }
            if vacuum_due {
                self.vacuum_one(lake, layer, table).await?;
            }
        }
        Ok(())
    }

    async fn optimize_one(&self, lake: &Lake, layer: &str, table: &str) -> Result<()> {
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
            Ok(r) => {
                tracing::info!(
                    table = %r.table,
                    files_before = r.files_before,
                    files_after = r.files_after,
                    bytes_before = r.bytes_before,
                    bytes_after = r.bytes_after,
                    attempts = r.attempts,
                    ms = r.elapsed.as_millis() as u64,
                    "table compacted"
                );
                Ok(())
            }
            Err(Error::CompactionBusy(name)) => {
                tracing::info!(table = %name, "another process is compacting the table; skipped this turn");
                Ok(())
            }
            Err(e) => failed(layer, table, "optimize", e),
        }
    }

    async fn checkpoint_one(&self, lake: &Lake, layer: &str, table: &str) -> Result<()> {
        match checkpoint(lake, layer, table, self.config.cleanup_expired_logs).await {
            Ok(r) => {
                tracing::info!(
                    table = %r.table,
                    version = r.version,
                    logs_cleaned = r.logs_cleaned,
                    ms = r.elapsed.as_millis() as u64,
                    "checkpoint written"
                );
                Ok(())
            }
            Err(e) => failed(layer, table, "checkpoint", e),
        }
    }

    async fn vacuum_one(&mut self, lake: &Lake, layer: &str, table: &str) -> Result<()> {
        let options = VacuumOptions {
            retention_hours: self.config.vacuum_retention_hours,
            force: self.config.vacuum_force,
            max_attempts: self.config.max_attempts,
            ..VacuumOptions::default()
        };
        match vacuum(lake, layer, table, &options).await {
            Ok(r) => {
                tracing::info!(
                    table = %r.table,
                    deleted = r.files.len(),
                    ms = r.elapsed.as_millis() as u64,
                    "table vacuumed"
                );
                Ok(())
            }
            Err(e @ Error::RetentionTooShort { .. }) => {
                // A config mistake: say it once, not every interval and table.
                if !self.warned_retention {
                    self.warned_retention = true;
                    return failed(layer, table, "vacuum", e);
                }
                Ok(())
            }
            Err(e) => failed(layer, table, "vacuum", e),
        }
    }
}

/// Counts and logs a failed maintenance operation; returns the error only
/// when it is a refusal of the commit coordinator no retry cures.
fn failed(layer: &str, table: &str, op: &'static str, e: Error) -> Result<()> {
    // A table the batch did not create (silver of a table whose events all
    // were replays) is not an error.
    if matches!(e, Error::NoSuchTable(_)) {
        return Ok(());
    }
    crate::metrics::maintenance_failure(&format!("{layer}.{table}"), op);
    if e.is_coordinator_refusal() {
        return Err(e);
    }
    tracing::warn!(layer, table, op, error = %error_chain(&e), "maintenance failed; ingest goes on and maintenance tries again at its next turn");
    Ok(())
}
