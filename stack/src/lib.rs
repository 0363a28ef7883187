//! The platform on one machine, and where every command finds it.
//!
//! This crate owns:
//!
//! - [`config`]: the configuration (`tributary.toml`): embedded defaults,
//!   then the file, then `TRIBUTARY__SECTION__KEY` environment variables.
//! - [`Platform`]: the configuration resolved, once, into where things are:
//!   the source databases ([`Sources`]), the Kafka broker and the lake. The
//!   rule is the same everywhere: what the configuration names, else the
//!   local stack. Every command, the demo and the benchmarks start from a
//!   `Platform`, and so should every new process.
//! - the local stack ([`Platform::start`], [`down`], [`status`],
//!   [`StackState`]): PostgreSQL clusters made with the system's
//!   `initdb`/`pg_ctl` (found by [`postgres::PgTools`]) and a tansu broker
//!   ([`broker`]) and a Redis for the product cache ([`redis`]), all under
//!   the state folder.
//! - [`checks`]: whether the pipeline has caught up with the sources and
//!   whether silver equals them row for row: what `tributary wait` and
//!   `tributary verify`, the demo, the benchmarks and the tests ask.
//!
//! ```no_run
//! # async fn demo() -> tributary_stack::Result<()> {
//! use tributary_stack::{Platform, config};
//! // Defaults, ./tributary.toml and TRIBUTARY__* variables.
//! let config = config::load(None)?;
//! // Start the local stack (idempotent) and resolve against it.
//! let platform = Platform::start(config).await?;
//! for source in platform.sources()?.cdc_sources() {
//!     println!("capture {} shard {}", source.db, source.shard);
//! }
//! println!("broker {}", platform.kafka()?.brokers);
//! println!("lake {}", platform.lake_config().root);
//! # Ok(())
//! # }
//! ```

pub mod backup;
pub mod broker;
pub mod checks;
pub mod config;
pub mod daemon;
pub mod ha;
mod local;
pub mod observe;
mod platform;
pub mod postgres;
pub mod redis;
pub mod serving;
mod status;

pub use config::Config;
pub use local::{
    BrokerInstance, PgInstance, PgNode, StackState, down, scheduler_dir, ui_dir, ui_password,
};
pub use platform::{Platform, Sources};
pub use redis::RedisInstance;
pub use status::{ComponentStatus, status, table_status};

use tributary_model::lsn::Lsn;

/// Errors of the configuration, the local stack and the pipeline checks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {path}")]
    ConfigRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing config file {path}")]
    ConfigParse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid configuration (from {origin} and TRIBUTARY__* variables)")]
    ConfigInvalid {
        origin: String,
        #[source]
        source: Box<Error>,
    },
    /// A key the configuration does not know, or a value of the wrong type;
    /// `at` names the key.
    #[error("config error{at}: {message}")]
    ConfigKey { at: String, message: String },
    #[error("environment variable {key}: empty key segment")]
    EnvEmptySegment { key: String },
    #[error("environment variable {key}: `{section}` is not a section")]
    EnvNotSection { key: String, section: String },
    #[error("no [sources] configured and no local stack: run `tributary up`")]
    NoSources,
    #[error("no [kafka] configured and no local stack: run `tributary up`")]
    NoKafka,
    #[error("no stack in {state_dir}: run `tributary up`")]
    NoStack { state_dir: String },
    #[error("backup or restore of {cluster}: {reason}")]
    Backup { cluster: String, reason: String },
    #[error("cannot fail {shard} over: {reason}")]
    Failover { shard: String, reason: String },
    #[error(
        "the stack in {state_dir} has {found} shards but stack.shards = {configured}; run `tributary down --purge` first"
    )]
    ShardsChanged {
        state_dir: String,
        found: usize,
        configured: usize,
    },
    #[error(
        "PostgreSQL server binaries not found: install the `postgresql` package or set stack.pg_bin"
    )]
    PostgresNotInstalled,
    #[error("{program} not found in {dir}: install PostgreSQL's client tools")]
    PostgresToolMissing { program: String, dir: String },
    #[error(
        "the tansu broker is not installed: run ./scripts/bootstrap.sh (cargo install tansu --features libsql) or set stack.broker_bin"
    )]
    BrokerNotInstalled,
    #[error(
        "redis-server not found: install the `redis-server` package (scripts/bootstrap.sh does), set stack.redis_bin, or stack.redis = false"
    )]
    RedisNotInstalled,
    #[error("Redis did not answer on {url} within 10 s ({reason}); see {log}")]
    RedisNotReady {
        url: String,
        log: String,
        reason: String,
    },
    #[error("{what} did not answer on {url} within 60 s; see {log}")]
    ServingNotReady {
        what: String,
        url: String,
        log: String,
    },
    #[error("rollout: {reason}")]
    Rollout { reason: String },
    #[error(transparent)]
    Gateway(tributary_gateway::Error),
    #[error("the broker did not listen on {url} within 30s; see {log}")]
    BrokerNotListening { url: String, log: String },
    #[error("starting PostgreSQL {name}")]
    PostgresStart {
        name: String,
        #[source]
        source: Box<Error>,
    },
    #[error("{what}: cannot start {program}")]
    Spawn {
        what: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {output}")]
    CommandFailed {
        what: String,
        status: String,
        output: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    StateFile {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid DSN")]
    InvalidDsn(#[source] tokio_postgres::Error),
    #[error("{context}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("creating topics")]
    Topics(#[source] tributary_kafka::Error),
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::Error),
    #[error("lake")]
    Lake(#[source] Box<tributary_lake::Error>),
    #[error("{context}")]
    Query {
        context: String,
        #[source]
        source: Box<tributary_query::Error>,
    },
    #[error("cdc")]
    Cdc(#[source] Box<tributary_cdc::Error>),
    #[error(transparent)]
    Model(#[from] tributary_model::Error),
    #[error(
        "slot {slot} did not confirm {target} within {timeout:?}: is `tributary cdc run` running?"
    )]
    SlotBehind {
        slot: String,
        target: Lsn,
        timeout: std::time::Duration,
    },
    #[error(
        "the lake did not reach the end of {topic} within {timeout:?}: is `tributary lake ingest` running?"
    )]
    LakeBehind {
        topic: String,
        timeout: std::time::Duration,
    },
    #[error(
        "{program} not found on PATH: `tributary up --observe` needs Debian's prometheus, \
         prometheus-alertmanager and prometheus-postgres-exporter (scripts/bootstrap.sh installs them)"
    )]
    ObserveToolMissing { program: String },
    #[error("{what} did not answer on {url} within 30 s; see {log}")]
    ObserveNotReady {
        what: String,
        url: String,
        log: String,
    },
    /// A broken invariant of this crate.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<tributary_lake::Error> for Error {
    fn from(source: tributary_lake::Error) -> Self {
        Error::Lake(Box::new(source))
    }
}

impl From<tributary_cdc::Error> for Error {
    fn from(source: tributary_cdc::Error) -> Self {
        Error::Cdc(Box::new(source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a description to an I/O error.
pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Attaches a description to a PostgreSQL error.
pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |source| Error::Postgres { context, source }
}
