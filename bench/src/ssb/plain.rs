//! The queries through plain DataFusion over the very same Parquet files:
//! one listing table per SSB table over the files of its current Delta
//! version (the list DuckDB reads), no Delta layer, no tributary session.
//! Same DataFusion version and default settings as tributary's session, so
//! `tributary / datafusion` is what tributary's table layer costs, and
//! `datafusion / duckdb` what the engine does.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;

use super::answers;
use super::queries::Query;
use super::{Measured, measure_hot};
use crate::{Error, Result};

fn df(what: &str) -> impl FnOnce(datafusion::error::DataFusionError) -> Error + '_ {
    move |e| Error::Internal(format!("plain DataFusion, {what}: {e}"))
}

/// A context with one listing table per `(name, files)`.
async fn context(files: &[(&'static str, Vec<PathBuf>)]) -> Result<SessionContext> {
    let ctx = SessionContext::new();
    let state = ctx.state();
    for (name, paths) in files {
        let urls = paths
            .iter()
            .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(df("file paths"))?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&state)
            .await
            .map_err(df("reading the schema"))?;
        let table = ListingTable::try_new(config).map_err(df("a listing table"))?;
        ctx.register_table(*name, Arc::new(table))
            .map_err(df("registering a table"))?;
    }
    Ok(ctx)
}

/// DataFusion's version and its measurements, in query order.
pub(crate) async fn measure(
    files: &[(&'static str, Vec<PathBuf>)],
    queries: &[Query],
    runs: usize,
) -> Result<(String, Vec<Measured>)> {
    let ctx = context(files).await?;
    let run = async |query: &Query| {
        ctx.sql(query.sql)
            .await
            .map_err(df(query.name))?
            .collect()
            .await
            .map_err(df(query.name))
    };
    let first = async |query: &Query| answers::from_batches(&run(query).await?);
    let measured = measure_hot("datafusion", queries, runs, first, run).await?;
    Ok((datafusion::DATAFUSION_VERSION.to_string(), measured))
}
