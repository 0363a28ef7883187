//! Scheduled ETL: jobs with cron schedules, dependencies, retries,
//! backfills, run history and a standby that takes over.
//!
//! - [`job`]: a job file (`workflows/jobs/<name>.toml`): its task,
//!   schedule and time zone, upstream jobs, timeout, retries, concurrency
//!   and catch-up policies;
//! - [`dag`]: the jobs of a folder as a DAG; bad files, unknown upstreams
//!   and cycles are refused by file and job while the rest loads;
//! - [`history`]: runs and attempts in the catalog database (schema
//!   `tributary_workflows`), recorded with fenced statements;
//! - [`leader`]: leadership through a lease with an epoch (the fencing
//!   number);
//! - [`scheduler`]: the loop that creates, starts and records runs;
//! - [`metrics`]: runs by job and state, attempt durations, schedule
//!   delay, leadership;
//! - [`sql`]: the history as the tables `workflows.runs` and
//!   `workflows.attempts` of the SQL console and the wire server;
//! - [`timeline`]: recent runs as a Gantt chart, text or SVG;
//! - [`runner`]: running an attempt (the [`runner::Runner`] seam, the shell
//!   task) and what its end means for the run.
//!
//! The decisions are written down in `docs/workflows.md`.

pub mod dag;
pub mod history;
pub mod job;
pub mod leader;
pub mod metrics;
pub mod runner;
pub mod scheduler;
pub mod sql;
pub mod timeline;

pub use dag::Dag;
pub use job::{Job, Task};

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A job file that is refused; the other jobs load.
    #[error("{file}: job `{job}`{}: {reason}", if field.is_empty() { String::new() } else { format!(", field `{field}`") })]
    JobFile {
        file: String,
        job: String,
        field: String,
        reason: String,
    },
    #[error("workflows history: {what}")]
    Db {
        what: String,
        #[source]
        source: tokio_postgres::Error,
    },
    /// The scheduler lease is no longer this process's (epoch it had).
    #[error("the scheduler lease of epoch {0} is no longer held: another scheduler leads")]
    Fenced(i64),
    #[error("scheduler lease")]
    Lease(#[source] Box<tributary_lake::Error>),
    #[error("{0}")]
    Usage(String),
}

impl From<tributary_lake::Error> for Error {
    fn from(e: tributary_lake::Error) -> Self {
        Error::Lease(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
