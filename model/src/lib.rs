//! The contracts every tributary stage shares. No I/O lives here.
//!
//! - [`event`]: the change-event envelope the CDC reader publishes and the lake
//!   consumes (Debezium-style JSON), with its deterministic `event_id`.
//! - [`lsn`]: PostgreSQL log sequence numbers.
//! - [`pgtype`]: the source column types the pipeline understands and the
//!   conversion of PostgreSQL text output into typed JSON values.
//! - [`domain`]: the order-domain table list, topic, slot and lake table naming.
//! - [`watermark`]: the CDC watermark message and its topic.
//! - [`clickstream`]: the click events the order service publishes directly.
//! - [`profile`]: the customer risk profile the fraud detector reads.
//! - [`backoff`]: the retry delays of every long-running loop.
//! - [`duration`]: durations written as text (`90s`, `10m`).
//! - [`dsn`]: connection strings read, and shown without their password.
//!
//! ```
//! use tributary_model::{domain, lsn::Lsn};
//! assert_eq!(domain::topic_name("tributary", "orders", "customers"), "tributary.orders.customers");
//! assert_eq!("0/16B3748".parse::<Lsn>().unwrap().to_string(), "0/16B3748");
//! ```

pub mod backoff;
pub mod clickstream;
pub mod domain;
pub mod dsn;
pub mod duration;
pub mod event;
pub mod lsn;
pub mod pgtype;
pub mod profile;
pub mod watermark;

/// Errors of the shared contracts: always bad input, never a broken invariant.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid LSN {0:?}: expected two hex numbers like 0/16B3748")]
    InvalidLsn(String),
    #[error("column {column:?} of type {pg_type}: cannot read value {value:?}")]
    InvalidValue {
        column: String,
        pg_type: String,
        value: String,
    },
    #[error("change event is malformed: {0}")]
    InvalidEvent(String),
    #[error("click event: `{field}` {reason}")]
    InvalidClickEvent { field: &'static str, reason: String },
    #[error("change event is not valid JSON")]
    Json(#[source] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A number of bytes for people: `512 B`, `1.5 KiB`, `3.0 GiB`.
pub fn human_bytes(b: u64) -> String {
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

/// An error with all its sources on one line, for logs and dead letters.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod human_bytes_tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
