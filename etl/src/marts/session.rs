//! The run's DataFusion session: the schemas the models read (listed in
//! [`super::models`]), registering lake tables, in-memory tables and id sets
//! in them, running a model's SQL, and the gold contract of plain, nullable
//! columns ([`plain_schema`], [`conform`]).
//!
//! It knows the lake and DataFusion and no model; of the marts it imports
//! only [`super::keys`].

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use tributary_lake::Lake;

use super::keys::{self, column};
use crate::{Error, Result};

/// Every schema a run registers tables in (see [`super::models`]).
const SCHEMAS: [&str; 8] = [
    "bronze", "new", "silver", "changed", "prev", "gold", "stage", "scope",
];

/// A session with the `date_key` function and the empty schemas.
pub(crate) fn new() -> Result<SessionContext> {
    let ctx = SessionContext::new();
    ctx.register_udf(keys::date_key_udf());
    let catalog = ctx
        .catalog("datafusion")
        .expect("a default SessionContext has the datafusion catalog");
    for name in SCHEMAS {
        catalog
            .register_schema(name, Arc::new(MemorySchemaProvider::new()))
            .map_err(|source| Error::Source { table: "*", source })?;
    }
    Ok(ctx)
}

/// Registers `provider` as `schema.name`, replacing what was there.
pub(crate) fn register(
    ctx: &SessionContext,
    schema: &str,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<()> {
    let schema: Arc<dyn SchemaProvider> = ctx
        .catalog("datafusion")
        .and_then(|c| c.schema(schema))
        .expect("the session's schemas are created with it");
    let err = |source| Error::Model {
        model: "registering inputs",
        source,
    };
    schema.deregister_table(name).map_err(err)?;
    schema
        .register_table(name.to_string(), provider)
        .map_err(err)?;
    Ok(())
}

/// Registers `batches` as the in-memory table `schema.name`.
pub(crate) fn register_batches(
    ctx: &SessionContext,
    schema: &str,
    name: &str,
    columns: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    let table = MemTable::try_new(columns, vec![batches]).map_err(|source| Error::Model {
        model: "in-memory table",
        source,
    })?;
    register(ctx, schema, name, Arc::new(table))
}

/// Registers `scope.<name>(id BIGINT)`.
pub(crate) fn register_ids(ctx: &SessionContext, name: &str, ids: &BTreeSet<i64>) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(ids.iter().copied()))],
    )
    .map_err(|source| Error::Arrow {
        table: "scope",
        source,
    })?;
    register_batches(ctx, "scope", name, schema, vec![batch])
}

/// Runs `query` and collects it, with the planned schema.
pub(crate) async fn sql(
    ctx: &SessionContext,
    model: &'static str,
    query: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let err = |source| Error::Model { model, source };
    let frame = ctx.sql(query).await.map_err(err)?;
    let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let batches = frame.collect().await.map_err(err)?;
    Ok((planned, batches))
}

/// The first column of `query`, cast to `data_type`, batch by batch.
async fn first_column<A: Array + Clone + 'static>(
    ctx: &SessionContext,
    query: &str,
    data_type: &DataType,
) -> Result<Vec<A>> {
    let (_, batches) = sql(ctx, "scope", query).await?;
    batches
        .iter()
        .map(|b| {
            let name = b.schema().field(0).name().clone();
            column::<A>(b, &name, data_type).map_err(|source| Error::Model {
                model: "scope",
                source,
            })
        })
        .collect()
}

/// The distinct integers of the first column of `query`.
pub(crate) async fn ids(ctx: &SessionContext, query: &str) -> Result<BTreeSet<i64>> {
    let arrays = first_column::<Int64Array>(ctx, query, &DataType::Int64).await?;
    Ok(arrays.iter().flat_map(|a| a.iter().flatten()).collect())
}

/// The distinct strings of the first column of `query`.
pub(crate) async fn ids_text(ctx: &SessionContext, query: &str) -> Result<HashSet<String>> {
    let arrays = first_column::<StringArray>(ctx, query, &DataType::Utf8).await?;
    Ok(arrays
        .iter()
        .flat_map(|a| a.iter().flatten().map(str::to_string))
        .collect())
}

/// The integers of `column` of `batch` (a stage or a model's output).
pub(crate) fn ids_in(
    model: &'static str,
    batch: &RecordBatch,
    name: &str,
) -> Result<BTreeSet<i64>> {
    let values = column::<Int64Array>(batch, name, &DataType::Int64)
        .map_err(|source| Error::Model { model, source })?;
    Ok(values.values().iter().copied().collect())
}

/// Plain Arrow types (no view types) and nullable columns: the gold
/// contract, the same whatever DataFusion planned and readable everywhere.
pub(crate) fn plain_schema(schema: &SchemaRef) -> SchemaRef {
    let plain = |t: &DataType| match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    };
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), plain(f.data_type()), true))
            .collect::<Vec<_>>(),
    ))
}

/// Casts batches to `schema`, matching columns by name.
pub(crate) fn conform(
    table: &'static str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let arrow_err = |source| Error::Arrow { table, source };
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        if batch.num_rows() == 0 {
            continue;
        }
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column = batch
                .column_by_name(field.name())
                .ok_or_else(|| Error::Arrow {
                    table,
                    source: arrow::error::ArrowError::SchemaError(format!(
                        "column {} missing; run with --full-refresh after changing a model",
                        field.name()
                    )),
                })?;
            columns.push(arrow::compute::cast(column, field.data_type()).map_err(arrow_err)?);
        }
        out.push(RecordBatch::try_new(schema.clone(), columns).map_err(arrow_err)?);
    }
    Ok(out)
}

/// `layer.table` at its current version, or `None` when it does not exist.
pub(crate) async fn open(lake: &Lake, layer: &str, table: &str) -> Result<Option<DeltaTable>> {
    // `Lake::open` reports a missing folder on object stores as an error
    // rather than `None`, so existence is decided by the listing.
    if !lake.list_tables(layer).await?.iter().any(|t| t == table) {
        return Ok(None);
    }
    Ok(lake.open(layer, table).await?)
}

/// A Delta table as a DataFusion table.
pub(crate) async fn provider(
    table: &DeltaTable,
    name: &'static str,
) -> Result<Arc<dyn TableProvider>> {
    table
        .table_provider()
        .await
        .map_err(|source| Error::Source {
            table: name,
            source,
        })
}
