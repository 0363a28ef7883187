//! The crate's error type.

use std::net::SocketAddr;

/// Every failure of the OLTP services, the migrations and the load generator.
///
/// Variants split bad input (`BadRequest`, `Unprocessable`, `NotFound`,
/// `Conflict`, `Config`) from environment failures (`Database`, `Connect`,
/// `PoolTimeout`, ...) and broken invariants (`Internal`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is invalid; `field` is its dotted path.
    #[error("invalid configuration `{field}`: {reason}")]
    Config { field: &'static str, reason: String },

    /// A request is malformed; `field` names the offending input.
    #[error("invalid `{field}`: {reason}")]
    BadRequest { field: String, reason: String },

    /// A request is well formed but refers to something unusable.
    #[error("unprocessable `{field}`: {reason}")]
    Unprocessable { field: String, reason: String },

    /// The entity addressed by the request path does not exist.
    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: i64 },

    /// The entity is not in a state that allows the operation.
    #[error("conflict on `{field}`: {reason}")]
    Conflict { field: String, reason: String },

    /// A feature the request needs is not available in this deployment or
    /// not right now (503); `field` names what is missing.
    #[error("`{field}` unavailable: {reason}")]
    Unavailable { field: String, reason: String },

    /// The Kafka client could not be set up or used.
    #[error("kafka: {context}")]
    Kafka {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    /// A statement failed; the SQL text never reaches clients.
    #[error("database statement failed")]
    Database(#[from] tokio_postgres::Error),

    /// Opening a connection to a database failed.
    #[error("cannot connect to database `{database}`")]
    Connect {
        database: String,
        #[source]
        source: tokio_postgres::Error,
    },

    /// No pooled connection became free in time.
    #[error("timed out waiting for a connection to `{database}`")]
    PoolTimeout { database: String },

    /// A schema migration failed and was rolled back.
    #[error("migration {version} failed on `{database}`")]
    Migration {
        database: String,
        version: i32,
        #[source]
        source: tokio_postgres::Error,
    },

    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    /// The HTTP server stopped with an I/O error.
    #[error("HTTP server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    /// The load generator's HTTP client failed.
    #[error("HTTP client request failed")]
    Http(#[from] reqwest::Error),

    /// The load generator's labels file could not be created.
    #[error("cannot create the labels file {path}")]
    Labels {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// A broken invariant: a bug or a corrupted database.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::PoolTimeout { .. }
            | Error::Http(_)
            | Error::Unavailable { .. } => true,
            Error::Database(e) | Error::Migration { source: e, .. } => {
                e.is_closed()
                    || e.code().is_some_and(|c| {
                        *c == tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED
                    })
            }
            _ => false,
        }
    }

    pub(crate) fn bad(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn unprocessable(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Unprocessable {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn conflict(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Conflict {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_field() {
        let e = Error::bad("items[0].quantity", "must be positive");
        assert_eq!(
            e.to_string(),
            "invalid `items[0].quantity`: must be positive"
        );
        assert!(!e.is_retryable());
        assert!(
            Error::PoolTimeout {
                database: "x".into()
            }
            .is_retryable()
        );
    }
}
