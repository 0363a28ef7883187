//! Writing gold: a gold table's new state ([`Output`]) and how a run commits
//! it — one Delta commit per table, in commit order, each carrying the run's
//! watermark (see [`super::watermark`]) in the same commit as the data, so
//! a table never claims input it does not hold. A table is patched with
//! `replaceWhere` on the rebuilt ids or overwritten; a table with nothing
//! to rewrite gets a commit that records only the watermark.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tributary_lake::Lake;

use super::models::GOLD;
use super::session;
use super::watermark::{self, Watermark};
use crate::{Error, Result};

/// Above this many rebuilt ids a table is overwritten instead of patched
/// with `replaceWhere` (a predicate with that many literals costs more than
/// it saves).
const MAX_REPLACE_IDS: usize = 20_000;

/// One gold table written by a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MartTable {
    pub name: &'static str,
    /// Rows in the table after the run.
    pub rows: usize,
    /// Rows the run wrote (all of them on a full refresh).
    pub written: usize,
    /// The Delta version the run committed.
    pub version: Option<u64>,
}

/// A gold table's new state and how to write it.
pub(crate) struct Output {
    pub name: &'static str,
    pub schema: SchemaRef,
    /// The whole table after the run.
    pub post: Vec<RecordBatch>,
    pub write: Write,
}

pub(crate) enum Write {
    /// Replace the table with `post`.
    Overwrite,
    /// Replace the rows whose `column` is in `ids` with `rows`.
    Replace {
        column: &'static str,
        ids: BTreeSet<i64>,
        rows: Vec<RecordBatch>,
    },
}

impl Output {
    /// A table rewritten whole.
    pub(crate) fn overwrite(name: &'static str, schema: SchemaRef, post: Vec<RecordBatch>) -> Self {
        Output {
            name,
            schema,
            post,
            write: Write::Overwrite,
        }
    }

    /// The ids whose rows the run replaces (none for an overwrite).
    pub(crate) fn replaced_ids(&self) -> BTreeSet<i64> {
        match &self.write {
            Write::Replace { ids, .. } => ids.clone(),
            Write::Overwrite => BTreeSet::new(),
        }
    }

    /// Registers the new state as `gold.<name>`, for the models built after
    /// it and for the data tests.
    pub(crate) fn register(&self, ctx: &SessionContext) -> Result<()> {
        session::register_batches(ctx, GOLD, self.name, self.schema.clone(), self.post.clone())
    }
}

/// Commits every output in order, each with `watermark`. Fault injection:
/// stops with [`Error::Injected`] before commit number `fail_after`.
pub(crate) async fn commit_all(
    lake: &Lake,
    outputs: Vec<Output>,
    full: bool,
    watermark: &Watermark,
    fail_after: Option<usize>,
) -> Result<Vec<MartTable>> {
    let mut tables = Vec::new();
    for (i, out) in outputs.into_iter().enumerate() {
        if fail_after == Some(i) {
            return Err(Error::Injected(i));
        }
        let rows = out.post.iter().map(RecordBatch::num_rows).sum();
        let (version, written) = commit(lake, &out, full, watermark).await?;
        tracing::info!(table = out.name, rows, written, version = ?version, "gold table committed");
        tables.push(MartTable {
            name: out.name,
            rows,
            written,
            version,
        });
    }
    Ok(tables)
}

/// Writes one gold table; returns the committed version and the rows written.
async fn commit(
    lake: &Lake,
    out: &Output,
    full: bool,
    watermark: &Watermark,
) -> Result<(Option<u64>, usize)> {
    let table = out.name;
    let handle = match session::open(lake, GOLD, table).await? {
        Some(t) => t,
        None => lake.table_handle(GOLD, table).await?,
    };
    let props = watermark.commit_properties();
    let (batches, predicate) = match &out.write {
        Write::Replace { ids, .. } if ids.is_empty() => {
            let version = watermark::commit_only(&handle, table, props).await?;
            return Ok((Some(version), 0));
        }
        Write::Replace { column, ids, rows } if !full && ids.len() <= MAX_REPLACE_IDS => {
            let list = ids.iter().map(|id| lit(*id)).collect();
            let target = out
                .schema
                .field_with_name(column)
                .map(|f| f.data_type().clone())
                .unwrap_or(DataType::Int64);
            let predicate = if target == DataType::Int64 {
                col(*column).in_list(list, false)
            } else {
                datafusion::prelude::cast(col(*column), DataType::Int64).in_list(list, false)
            };
            (rows.clone(), Some(predicate))
        }
        _ => (out.post.clone(), None),
    };
    let written = batches.iter().map(RecordBatch::num_rows).sum();
    // An empty result still has to create or replace the table with its schema.
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(out.schema.clone())]
    } else {
        batches
    };
    let mut write = handle
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_table_name(table)
        .with_commit_properties(props);
    write = match predicate {
        Some(p) => write.with_replace_where(p),
        None => write.with_schema_mode(SchemaMode::Overwrite),
    };
    let written_table = write
        .await
        .map_err(|source| Error::Write { table, source })?;
    Ok((written_table.version(), written))
}
