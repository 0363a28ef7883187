//! Where live jobs' outputs go.
//!
//! - [`delta`]: the job's table, exactly once with its checkpoints;
//! - [`kafka`]: a topic, at least once, keyed by the output's id;
//! - [`webhook`]: an HTTP endpoint, at least once, with the id as the
//!   `Idempotency-Key` header and retries with backoff.

pub mod delta;
pub mod kafka;
pub mod late;
pub mod webhook;
