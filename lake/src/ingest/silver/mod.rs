//! Silver: the current state of each source table.
//!
//! - `merge`: change events into silver through a MERGE that takes a change
//!   only when its (commit LSN, ordinal) is newer than the row's, so replays
//!   and late deliveries never move a row backwards; truncates split a batch.
//! - `evolution`: silver follows the source's schema (added columns, widened
//!   types) before a merge, and [`retype_silver_column`] is the manual fix
//!   for a change it cannot follow.
//! - `validation`: values silver cannot store exactly (NaN or too many
//!   digits in a decimal column) are refused with the column and LSN, never
//!   the value.
//!
//! Rule kept here: a change silver cannot store without loss is an
//! [`Error::Incompatible`](crate::Error::Incompatible), found before anything
//! of its batch is written.

use tributary_model::domain::silver_columns as meta;

mod evolution;
mod merge;
mod validation;

pub(crate) use evolution::plan_silver;
pub use evolution::retype_silver_column;
pub(crate) use merge::merge_silver;
pub(crate) use validation::check_values;

/// Whether `c` is one of silver's own columns (shard, position, event id,
/// commit time) rather than a source column.
fn is_meta(c: &str) -> bool {
    [
        meta::SHARD,
        meta::LSN,
        meta::ORDINAL,
        meta::EVENT_ID,
        meta::COMMIT_TS,
    ]
    .contains(&c)
}
