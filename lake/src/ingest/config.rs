//! Ingest settings (`[ingest]`) and the names and sizes ingest gives the
//! tables it creates beside bronze and silver.
//!
//! Rule kept here: every default is a named function or constant, so the
//! config file, the docs and the code agree on one value.

use serde::Deserialize;

/// Ingest settings (`[ingest]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Most messages in one commit.
    #[serde(default = "default_batch_messages")]
    pub batch_max_messages: usize,
    /// Longest time a change waits in the ingester before its batch starts
    /// committing: counted from the end of the previous collection, so the
    /// time the previous batch took to commit counts against it.
    #[serde(default = "default_batch_ms")]
    pub batch_max_ms: u64,
    /// Names the offsets in the lake (and the broker-side group, for monitoring only).
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Time to live of a table's single-writer lease (with a coordinator): a
    /// killed owner is replaced within about this long.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Compaction, checkpoints and vacuum of the tables ingest writes.
    #[serde(default)]
    pub maintenance: crate::maintenance::MaintenanceConfig,
    /// Longest time an idle silver table's freshness record in the lake may
    /// lag the ingester's own (see [`crate::freshness`]): at most one
    /// offsets-only commit per idle table per this interval.
    #[serde(default = "default_freshness_record_ms")]
    pub freshness_record_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_max_messages: default_batch_messages(),
            batch_max_ms: default_batch_ms(),
            group_id: default_group(),
            lease_ttl_ms: default_lease_ttl_ms(),
            maintenance: Default::default(),
            freshness_record_ms: default_freshness_record_ms(),
        }
    }
}

fn default_batch_messages() -> usize {
    50_000
}
fn default_batch_ms() -> u64 {
    1000
}
fn default_group() -> String {
    "tributary-lake".into()
}
fn default_lease_ttl_ms() -> u64 {
    6000
}
fn default_freshness_record_ms() -> u64 {
    10_000
}

/// Name of the dead-letter table in the bronze layer.
pub const DEAD_LETTERS: &str = "_dead_letters";

/// Name of the schema-change log in the bronze layer.
pub const SCHEMA_CHANGES: &str = "_schema_changes";

/// `delta.targetFileSize` of a silver table, set when ingest creates it.
/// A MERGE rewrites every file holding a key it updates, and the files it
/// writes are cut at this size; small files keep a batch that updates
/// recent rows from rewriting the whole table (the merge skips files whose
/// key range the batch misses).
pub const SILVER_TARGET_FILE_SIZE: u64 = 1 << 20;
