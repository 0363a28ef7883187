//! Change data capture: PostgreSQL logical replication (pgoutput) into Kafka.
//!
//! # What this crate owns
//!
//! One reader per source database ([`SourceDb`]): its publication and
//! replication slot, a consistent initial snapshot (an exported snapshot,
//! copied in primary-key chunks by parallel connections, resumable), then
//! the pgoutput stream decoded into one
//! [`ChangeEvent`](tributary_model::event::ChangeEvent) per row change,
//! heartbeats that keep idle slots moving, and watermarks. Its own state
//! (snapshot progress, schema changes, resnapshot requests) lives in each
//! source database, in schema `tributary_cdc`, which nothing else reads.
//!
//! # The promise
//!
//! The slot's confirmed LSN moves only once every event up to that commit is
//! durable in the sink, so a crash at any moment replays from the slot
//! without loss; replays carry the same `event_id`.
//!
//! # Seams
//!
//! - [`sink::Sink`]: where events go and when they are *accepted* and
//!   *durable*; [`sink::KafkaSink`] (the product) and [`sink::DiscardSink`]
//!   (tests, benchmarks). [`run`] uses Kafka, [`run_with`] any sink.
//! - [`slot_status`]: how far a reader got for a slot (confirmed LSN,
//!   snapshot completed), for `tributary wait`, tests and benchmarks.
//! - [`request_resnapshot`]: ask the running readers to copy a table again.
//!
//! # Example
//!
//! ```no_run
//! use tributary_cdc::{CdcConfig, SourceDb};
//! use tributary_kafka::KafkaConfig;
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn f() -> tributary_cdc::Result<()> {
//! let source = SourceDb {
//!     db: "orders".into(),
//!     shard: 0,
//!     dsn: "host=db1 user=cdc dbname=orders sslmode=verify-full sslrootcert=/etc/rds-ca.pem".into(),
//!     tables: vec!["orders".into(), "order_items".into()],
//! };
//! let shutdown = CancellationToken::new();
//! // Runs until `shutdown` is cancelled (then confirms what is durable).
//! tributary_cdc::run(CdcConfig::default(), KafkaConfig::local("127.0.0.1:9092"), vec![source], shutdown).await
//! # }
//! ```
//!
//! # Layout
//!
//! [`supervisor`](run) (a task per source, restarts) → `session` (one
//! streaming session: the select loop, heartbeats, status) → `slot`
//! (publication, slot, snapshot start/resume/finish, resnapshot) and
//! `stream` (the pgoutput → event state machine, no I/O) → [`sink`]. Below
//! them: `snapshot` (the chunked copy), `state` (the `tributary_cdc`
//! tables), [`decode`] (pgoutput), `encode` (events as JSON bytes),
//! `protocol` (the walsender conversation), `source` (DSNs, TLS, the SQL
//! and replication connections), [`metrics`].

pub mod decode;
pub(crate) mod encode;
pub mod metrics;
pub(crate) mod protocol;
pub mod published;
pub(crate) mod session;
pub mod sink;
pub(crate) mod slot;
pub(crate) mod snapshot;
pub(crate) mod source;
pub(crate) mod state;
pub mod status;
pub(crate) mod stream;
pub(crate) mod supervisor;

use serde::Deserialize;

pub use slot::{advance_wal_past, request_resnapshot};
pub use source::SourceDb;
pub use status::{SlotStatus, slot_status};
pub use supervisor::{run, run_with};

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

/// Errors of the CDC reader. [`Error::is_transient`] tells the supervisor
/// which ones a restart from the slot cures.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad settings or input (a DSN, a table that is not published).
    #[error("cdc config: {0}")]
    Config(String),
    /// The connection to a server failed or was lost.
    #[error("connecting to {target}")]
    Connect {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// TLS cannot be set up as the DSN's `sslmode` demands: the server
    /// refuses TLS, or its certificate is rejected.
    #[error("TLS with {target}")]
    Tls {
        target: String,
        #[source]
        source: std::io::Error,
    },
    /// The walsender answered with an error.
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
    /// Reaching the broker or creating topics.
    #[error(transparent)]
    Broker(#[from] tributary_kafka::Error),
    /// A delivery failed (or did not finish in time): replay from the slot.
    #[error("kafka delivery: {0}")]
    Delivery(String),
    #[error("row value")]
    Value(#[from] tributary_model::Error),
    #[error("io")]
    Io(#[source] std::io::Error),
    /// A broken invariant or a failed task: a bug, not the environment.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether reconnecting and resuming from the slot can cure this.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Kafka { .. } | Error::Delivery(_) | Error::Io(_) => true,
            Error::Broker(e) => e.is_transient(),
            Error::Postgres { source, .. } => match source.as_db_error() {
                // A certificate or a refused TLS does not change by retrying;
                // a lost connection does.
                None => !source::tls_rejected(source),
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
            Error::Config(_)
            | Error::Tls { .. }
            | Error::Decode(_)
            | Error::Value(_)
            | Error::Internal(_) => false,
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
