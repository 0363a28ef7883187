//! Change data capture: PostgreSQL logical replication (pgoutput) into Kafka.
//!
//! One reader task per source database. Each makes sure its publication and
//! replication slot exist, takes a consistent initial snapshot (an exported
//! snapshot read with COPY) when the slot is new, then streams pgoutput and
//! publishes one [`tributary_model::event::ChangeEvent`] per row change.
//!
//! Promise: the slot's confirmed LSN moves only after Kafka acknowledged every
//! event up to that commit ([`sink`]), so a crash at any moment replays from
//! the slot without loss; replays carry the same `event_id`.
//!
//! Modules: [`protocol`] (the walsender conversation), [`decode`] (pgoutput),
//! `encode` (events as JSON), `snapshot`, [`sink`] (Kafka), `reader` (the per-database loop).

pub mod decode;
pub(crate) mod encode;
pub mod metrics;
pub(crate) mod protocol;
pub(crate) mod reader;
pub mod sink;
pub(crate) mod snapshot;
pub(crate) mod state;
pub mod status;

use serde::Deserialize;

#[doc(hidden)]
pub use reader::run_discarding;
pub use reader::{SourceDb, request_resnapshot, run};
pub use status::{SlotStatus, slot_status};

/// CDC settings (`[cdc]` in the config file).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CdcConfig {
    /// Slots are named `<slot_prefix>_<db>_<shard>`.
    #[serde(default = "default_slot_prefix")]
    pub slot_prefix: String,
    #[serde(default = "default_publication")]
    pub publication: String,
    /// How often the reader reports its confirmed position to the server.
    #[serde(default = "default_status_ms")]
    pub status_interval_ms: u64,
    /// How often the reader writes a heartbeat message into each database's
    /// WAL, so an idle database's slot keeps advancing.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Rows per chunk of an initial snapshot (tables with an integer
    /// primary key are split into key ranges of about this many rows).
    #[serde(default = "default_chunk_rows")]
    pub snapshot_chunk_rows: u64,
    /// Connections copying snapshot chunks in parallel, per database.
    #[serde(default = "default_snapshot_workers")]
    pub snapshot_workers: usize,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            slot_prefix: default_slot_prefix(),
            publication: default_publication(),
            status_interval_ms: default_status_ms(),
            heartbeat_interval_ms: default_heartbeat_ms(),
            snapshot_chunk_rows: default_chunk_rows(),
            snapshot_workers: default_snapshot_workers(),
        }
    }
}

fn default_slot_prefix() -> String {
    "tributary".into()
}
fn default_publication() -> String {
    "tributary_pub".into()
}
fn default_status_ms() -> u64 {
    500
}
fn default_heartbeat_ms() -> u64 {
    5000
}
fn default_chunk_rows() -> u64 {
    50_000
}
fn default_snapshot_workers() -> usize {
    2
}

/// Errors of the CDC reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cdc config: {0}")]
    Config(String),
    #[error("connecting to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{target}: server error {code}: {message}")]
    Server {
        target: String,
        code: String,
        message: String,
    },
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("decoding: {0}")]
    Decode(String),
    #[error("postgres: {context}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("kafka delivery: {0}")]
    Delivery(String),
    #[error("row value")]
    Value(#[from] tributary_model::Error),
    #[error("io")]
    Io(#[source] std::io::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether reconnecting and resuming from the slot can cure this.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Kafka { .. } | Error::Delivery(_) | Error::Io(_) => true,
            Error::Postgres { source, .. } => match source.as_db_error() {
                None => true,
                // Server shutting down or restarting, too many connections,
                // connection failures: all cured by reconnecting.
                Some(db) => {
                    let code = db.code().code();
                    code.starts_with("57P") || code.starts_with("08") || code == "53300"
                }
            },
            // 55006: object in use (a slot still held by a dying walsender),
            // 57P01..57P03: server shutting down or starting.
            Error::Server { code, .. } => {
                code == "55006" || code.starts_with("57P") || code == "53300"
            }
            Error::Protocol(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a PostgreSQL error with what we were doing.
pub(crate) fn pg(context: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        context: context.to_string(),
        source,
    }
}
