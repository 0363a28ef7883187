//! The live jobs: stream processing over the change streams, in event time.
//!
//! Two jobs run on the engine of `tributary_stream` (watermarks, event-time
//! order, windows, keyed state, checkpoints):
//! - [`fraud`]: rules over each customer's orders, payments and
//!   add-to-carts raise alerts with deterministic ids, to Kafka
//!   (`tributary.alerts.fraud`), Delta (`gold.fraud_alerts`, exactly once)
//!   and an optional webhook;
//! - [`activity`]: views, add-to-carts, orders and revenue per product per
//!   5-minute window into `gold.product_activity_5m`.
//!
//! Both run in [`runtime`], which owns the loop every job shares: consume,
//! hold events until the watermark reaches them, apply them in event-time
//! order, publish, and checkpoint state and offsets with the Delta output
//! ([`sink::delta`]) so that a restart neither doubles nor misses an output.

pub mod activity;
pub mod config;
pub mod fraud;
pub mod inputs;
pub mod metrics;
pub mod runtime;
pub mod sink;

/// Errors of the live jobs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rules file {origin}: {}{reason}", where_in_rules(rule, field))]
    Rules {
        origin: String,
        rule: String,
        field: String,
        reason: String,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// An input message the job cannot read (it is counted and skipped).
    #[error("bad input: {0}")]
    Input(String),
    /// `gold.customer_risk_profile` could not be read.
    #[error("gold.customer_risk_profile: {0}")]
    Profiles(String),
    #[error("{what}")]
    Lake {
        what: String,
        #[source]
        source: Box<tributary_lake::Error>,
    },
    #[error("Delta table {table}")]
    Delta {
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },
    #[error(transparent)]
    Stream(#[from] tributary_stream::Error),
    #[error(transparent)]
    Kafka(#[from] tributary_kafka::Error),
    /// Another writer committed this job's output: this instance must stop.
    #[error("fenced: {0}")]
    Fenced(String),
    #[error("webhook {url}: {reason}")]
    Webhook { url: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// "rule `r`, field `f`: " with what is known of the place.
fn where_in_rules(rule: &str, field: &str) -> String {
    match (rule, field) {
        ("-", _) => String::new(),
        (r, "-") => format!("rule `{r}`: "),
        (r, f) => format!("rule `{r}`, field `{f}`: "),
    }
}
