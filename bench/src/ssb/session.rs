//! The queries through tributary's own engine: a [`tributary_query::Session`]
//! over the bench lake, exactly as `tributary sql` runs them.

use tributary_lake::Lake;
use tributary_query::Session;

use super::answers::{self, Rows};
use super::queries::Query;
use super::{Measured, measure_hot, store};
use crate::Result;

/// A session whose unqualified names resolve in the SSB layer. Without the
/// result cache, so every run is the engine's work; with it, repeated runs
/// measure the cache (`cached` column).
pub(crate) async fn open(lake: &Lake, cache: bool) -> Result<Session> {
    let session = if cache {
        Session::new(lake.clone())
            .await
            .map_err(crate::query("session"))?
    } else {
        crate::engine_session(lake).await?
    };
    let set = format!("set datafusion.catalog.default_schema = '{}'", store::LAYER);
    session.sql(&set).await.map_err(crate::query("set"))?;
    Ok(session)
}

/// Runs one query once and returns its rows.
pub(crate) async fn answer(session: &Session, query: &Query) -> Result<Rows> {
    let batches = session
        .sql(query.sql)
        .await
        .map_err(crate::query(query.name))?;
    answers::from_batches(&batches)
}

/// Every query hot: one warm-up run, whose rows are kept, then `runs` timed
/// runs. The timing covers what a user waits for: opening the tables at
/// their latest version, planning, executing and collecting the rows.
pub(crate) async fn measure(
    session: &Session,
    queries: &[Query],
    runs: usize,
) -> Result<Vec<Measured>> {
    let timed = async |query: &Query| {
        session
            .sql(query.sql)
            .await
            .map_err(crate::query(query.name))
    };
    let first = async |query: &Query| answer(session, query).await;
    measure_hot("tributary", queries, runs, first, timed).await
}
