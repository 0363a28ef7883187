//! The gold star schema, built incrementally from bronze and silver.
//!
//! A run:
//! 1. pins every source table at its current Delta version and reads the
//!    watermark of the last successful run (see `watermark`);
//! 2. finds what changed since: bronze files added since the watermark
//!    (new change events), silver files added or removed (changed rows);
//! 3. rebuilds only what those changes touch — the SCD2 chains of the rows
//!    that changed, the facts of the orders and payments that changed, the
//!    facts whose dimension versions changed (re-keying, which is also how a
//!    fact that arrived before its dimension row loses its `-1`), the days
//!    whose lines changed — into the new state of every gold table, in memory;
//! 4. runs the data tests over that new state; a failure stops the run
//!    before anything is written;
//! 5. commits each gold table once (`replaceWhere` of the rebuilt ids, or an
//!    overwrite), every commit carrying the run's watermark as Delta `txn`
//!    actions.
//!
//! `--full-refresh` (or a first run, a changed model definition, or gold
//! tables left by an interrupted commit phase) rebuilds every table from
//! scratch with the same code, so both paths give the same marts.
//!
//! Surrogate keys are hashes of the `event_id` that opened a version (see
//! `keys`); facts find "the version valid at the event time" through the
//! `customer_key_at` / `product_key_at` SQL functions.
//!
//! The modules, by job:
//! - `build`: a run from start to end (steps 1 and 2, then the others in
//!   order), its options and its report;
//! - `watermark`: what the last run recorded and what changed since;
//! - `dims`: the SCD2 dimensions and the calendar;
//! - `facts`: the facts and the daily aggregate, with their scopes;
//! - `checks`: the data tests (step 4);
//! - `commit`: writing gold and its watermark (step 5);
//! - `models`: what each table reads and the SQL of the facts;
//! - `history`: SCD2 versions and status histories from the change log;
//! - `keys`: surrogate keys and the point-in-time lookups;
//! - `session`: the run's DataFusion session and the gold column contract.

mod build;
mod checks;
mod commit;
mod dims;
mod facts;
mod history;
pub(crate) mod keys;
mod models;
pub(crate) mod session;
mod watermark;

pub use build::{
    BuildOptions, MartsReport, Mode, build_marts, build_marts_with, follow_marts, source_versions,
    test_marts,
};
pub use checks::{DataTest, DataTestReport, Failure, data_tests};
pub use commit::MartTable;
pub use history::BadChange;
pub use models::{ModelInfo, ModelKind, models};
