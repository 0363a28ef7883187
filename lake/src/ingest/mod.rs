//! Kafka change topics into bronze and silver, exactly once.
//!
//! Promise: after any crash, bronze holds every change event exactly once and
//! silver equals the source once ingest catches up.
//!
//! - Offsets live in the lake, not the broker: each bronze and silver commit
//!   carries Delta `txn` actions `(<group>/<topic>/<partition>, next offset)`
//!   in the same commit as the data, and ingest resumes from them.
//! - Replays of the CDC reader (same events at later offsets) are dropped by
//!   position: events of one shard reach a partition in (commit LSN, ordinal)
//!   order, so anything at or below the highest position already in bronze for
//!   that (partition, shard) is a replay.
//! - Silver applies exactly the events bronze accepted, through a MERGE that
//!   only takes a change newer than the row's stored position.
//! - A round commits every table's silver before any bronze, since freshness
//!   is measured in silver. Each commit carries its own offsets, so a crash
//!   in between leaves bronze a batch behind, and the replay writes bronze
//!   only.
//! - Silver follows the source's schema: each event carries its columns, and
//!   silver gains added columns and widened types before a merge; dropped
//!   columns stay (NULL on rows written after). Changes are logged in
//!   `bronze._schema_changes`. An event silver cannot take stops ingest of
//!   its table only, right before that event ([`Error::Incompatible`]).
//!
//! The modules, in the order a message meets them:
//!
//! - `config`: `[ingest]` settings and the names of the side tables.
//! - `runner`: the loop: [`run`] and [`serve`], one assignment of partitions
//!   per set of owned leases, the exits and restarts, idle tables' freshness.
//! - `gaps`: offsets a table needs that the broker's retention deleted
//!   ([`retention_gaps`]): said and counted, never skipped in silence.
//! - `resume`: where a table's ingest resumes: the offsets recorded in Delta
//!   ([`committed_offsets`]) and the high-water marks in bronze.
//! - `staging`: one table's messages decoded and sorted: replays dropped,
//!   undecodable ones set aside as dead letters, shape changes noted, and the
//!   first event silver cannot take found before anything is written.
//! - `batch`: one table's batch in two commits, silver then bronze, each with
//!   its offsets.
//! - `bronze`: the change-log rows and the append every bronze table uses.
//! - `silver`: the MERGE, schema evolution ([`retype_silver_column`] is its
//!   manual fix) and the checks of values against silver's types.
//!
//! Imports run one way, down this list: `runner`, `batch`, `staging`,
//! `silver`, `bronze`, `resume`, `config`; each module uses only modules
//! below it, so nothing but the runner knows the loop.
//!
//! [`Error::Incompatible`]: crate::Error::Incompatible

mod batch;
mod bronze;
mod config;
mod gaps;
mod resume;
mod runner;
mod silver;
mod staging;
#[cfg(test)]
mod tests;

pub use config::{DEAD_LETTERS, IngestConfig, SCHEMA_CHANGES, SILVER_TARGET_FILE_SIZE};
pub use gaps::{RetentionGap, retention_gaps};
pub use resume::committed_offsets;
pub use runner::{run, serve};
pub use silver::retype_silver_column;

// What dead-letter replay (`crate::dlq`) shares with ingest.
pub(crate) use bronze::{bronze_row, now_us, write_append};
pub(crate) use silver::merge_silver;
pub(crate) use staging::check_event;
#[cfg(test)]
pub(crate) use {batch::apply_batch, resume::load_state, staging::dead_letter};
