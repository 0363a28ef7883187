//! The gold star schema, rebuilt from silver.
//!
//! Every model is one SQL query over `silver.*` and the gold models built
//! before it; models run in dependency order (dimensions, facts, aggregates)
//! and each result replaces its gold table with one Delta overwrite commit.
//!
//! Surrogate keys: customer and product ids are global across shards, so the
//! surrogate key *is* the natural id (`customer_key = customer_id`,
//! `product_key = product_id`). That keeps keys stable from one build to the
//! next without a key map. `date_key` is `yyyymmdd`. Every dimension has a
//! `-1` Unknown member, and facts whose dimension row is missing point to it.
//! Dimensions are type 1 (current state) for now.

use std::fmt;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tributary_lake::Lake;

use crate::{Error, Result};

const SILVER: &str = "silver";
const GOLD: &str = "gold";

/// Silver tables the marts read.
const SOURCES: [&str; 4] = ["products", "customers", "orders", "order_items"];

/// A node of the marts DAG, for listing (`etl list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The gold table the model writes.
    pub name: &'static str,
    /// What it reads: `silver.<table>` or another gold model's name.
    pub depends_on: Vec<&'static str>,
}

/// One model: the gold table, its inputs and its SQL.
struct Model {
    name: &'static str,
    depends_on: &'static [&'static str],
    sql: &'static str,
}

/// Models in build order: every model comes after what it depends on.
const MODELS: &[Model] = &[
    Model {
        name: "dim_date",
        depends_on: &["silver.orders", "silver.order_items"],
        sql: DIM_DATE,
    },
    Model {
        name: "dim_customer",
        depends_on: &["silver.customers"],
        sql: DIM_CUSTOMER,
    },
    Model {
        name: "dim_product",
        depends_on: &["silver.products"],
        sql: DIM_PRODUCT,
    },
    Model {
        name: "fct_order_line",
        depends_on: &[
            "silver.order_items",
            "silver.orders",
            "dim_customer",
            "dim_product",
            "dim_date",
        ],
        sql: FCT_ORDER_LINE,
    },
    Model {
        name: "agg_daily_sales",
        depends_on: &["fct_order_line"],
        sql: AGG_DAILY_SALES,
    },
];

// The dates facts can carry: the order's creation date, or the line's when
// its order has not arrived in silver yet (see `fct_order_line`).
const DIM_DATE: &str = "
WITH dates AS (
    SELECT CAST(created_at AS DATE) AS date FROM silver.orders WHERE created_at IS NOT NULL
    UNION
    SELECT CAST(created_at AS DATE) AS date FROM silver.order_items WHERE created_at IS NOT NULL
)
SELECT
    CAST(date_part('year', date) * 10000 + date_part('month', date) * 100 + date_part('day', date) AS INT) AS date_key,
    date,
    CAST(date_part('year', date) AS INT) AS year,
    CAST(date_part('quarter', date) AS INT) AS quarter,
    CAST(date_part('month', date) AS INT) AS month,
    CAST(date_part('day', date) AS INT) AS day,
    CAST((CAST(date_part('dow', date) AS INT) + 6) % 7 + 1 AS INT) AS day_of_week,
    CAST(date_part('dow', date) AS INT) IN (0, 6) AS is_weekend
FROM dates
UNION ALL
SELECT CAST(-1 AS INT), CAST(NULL AS DATE), CAST(NULL AS INT), CAST(NULL AS INT), CAST(NULL AS INT),
       CAST(NULL AS INT), CAST(NULL AS INT), CAST(NULL AS BOOLEAN)
ORDER BY date_key
";

// A customer moving between shards can briefly exist on two; the latest
// change wins so the dimension stays unique on customer_id.
const DIM_CUSTOMER: &str = "
WITH latest AS (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY id ORDER BY _commit_ts DESC, _lsn DESC, _ordinal DESC, _shard
    ) AS rn
    FROM silver.customers
)
SELECT CAST(id AS BIGINT) AS customer_key, CAST(id AS BIGINT) AS customer_id, CAST(_shard AS INT) AS shard,
       name, email, region, country, city
FROM latest WHERE rn = 1
UNION ALL
SELECT CAST(-1 AS BIGINT), CAST(-1 AS BIGINT), CAST(-1 AS INT),
       'Unknown', 'Unknown', 'Unknown', 'Unknown', 'Unknown'
ORDER BY customer_key
";

const DIM_PRODUCT: &str = "
WITH latest AS (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY id ORDER BY _commit_ts DESC, _lsn DESC, _ordinal DESC, _shard
    ) AS rn
    FROM silver.products
)
SELECT CAST(id AS BIGINT) AS product_key, CAST(id AS BIGINT) AS product_id, sku, name, category,
       price, active
FROM latest WHERE rn = 1
UNION ALL
SELECT CAST(-1 AS BIGINT), CAST(-1 AS BIGINT), 'Unknown', 'Unknown', 'Unknown',
       CAST(NULL AS DECIMAL(12, 2)), CAST(NULL AS BOOLEAN)
ORDER BY product_key
";

// One row per silver order line, whatever its order's status. Every join is
// a LEFT JOIN against a side that is unique on the join key (orders deduped
// by id, dimensions unique on their natural key), so no line is dropped or
// repeated and SUM(line_total) reconciles with silver exactly.
const FCT_ORDER_LINE: &str = "
WITH orders AS (
    SELECT id, customer_id, status, created_at, _shard FROM (
        SELECT *, ROW_NUMBER() OVER (
            PARTITION BY id ORDER BY _commit_ts DESC, _lsn DESC, _ordinal DESC, _shard
        ) AS rn
        FROM silver.orders
    ) WHERE rn = 1
)
SELECT
    CAST(i.id AS BIGINT) AS order_item_id,
    CAST(i.order_id AS BIGINT) AS order_id,
    CAST(COALESCE(o._shard, i._shard) AS INT) AS shard,
    CAST(COALESCE(dc.customer_key, -1) AS BIGINT) AS customer_key,
    CAST(COALESCE(dp.product_key, -1) AS BIGINT) AS product_key,
    CAST(COALESCE(dd.date_key, -1) AS INT) AS date_key,
    COALESCE(o.status, 'unknown') AS status,
    i.quantity,
    i.unit_price,
    i.line_total
FROM silver.order_items i
LEFT JOIN orders o ON o.id = i.order_id
LEFT JOIN gold.dim_customer dc ON dc.customer_id = o.customer_id AND dc.customer_key <> -1
LEFT JOIN gold.dim_product dp ON dp.product_id = i.product_id AND dp.product_key <> -1
LEFT JOIN gold.dim_date dd ON dd.date = CAST(COALESCE(o.created_at, i.created_at) AS DATE)
ORDER BY order_item_id, shard
";

const AGG_DAILY_SALES: &str = "
SELECT
    date_key,
    CAST(COUNT(DISTINCT order_id) AS BIGINT) AS orders,
    CAST(COUNT(*) AS BIGINT) AS lines,
    CAST(COALESCE(SUM(quantity), 0) AS BIGINT) AS units,
    SUM(line_total) AS revenue
FROM gold.fct_order_line
GROUP BY date_key
ORDER BY date_key
";

/// The marts DAG in build order.
pub fn models() -> Vec<ModelInfo> {
    MODELS
        .iter()
        .map(|m| ModelInfo {
            name: m.name,
            depends_on: m.depends_on.to_vec(),
        })
        .collect()
}

/// One gold table written by a build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MartTable {
    pub name: &'static str,
    pub rows: usize,
    /// The Delta version the overwrite committed.
    pub version: Option<u64>,
}

/// What a build read and wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MartsReport {
    /// `(silver table, version read)`.
    pub sources: Vec<(&'static str, Option<u64>)>,
    /// Gold tables in build order.
    pub tables: Vec<MartTable>,
}

impl MartsReport {
    /// Rows written to `table`, if the build wrote it.
    pub fn rows(&self, table: &str) -> Option<usize> {
        self.tables.iter().find(|t| t.name == table).map(|t| t.rows)
    }
}

impl fmt::Display for MartsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(name, v)| {
                format!(
                    "{name}@v{}",
                    v.map_or_else(|| "?".into(), |v| v.to_string())
                )
            })
            .collect();
        writeln!(f, "read silver: {}", sources.join(", "))?;
        let width = self.tables.iter().map(|t| t.name.len()).max().unwrap_or(0) + "gold.".len();
        for t in &self.tables {
            let name = format!("gold.{}", t.name);
            let version = t.version.map_or_else(|| "?".into(), |v| v.to_string());
            writeln!(
                f,
                "{name:<width$}  {:>10} rows  (version {version})",
                t.rows
            )?;
        }
        Ok(())
    }
}

/// Rebuilds every gold table from the latest silver versions.
///
/// Silver is pinned at the start, so all models see the same versions even
/// if ingest commits meanwhile. Each gold table is replaced by one overwrite
/// commit (created when absent; its schema may change). A failing model
/// stops the build: tables built before it are new, the rest keep their
/// previous version.
pub async fn build_marts(lake: &Lake) -> Result<MartsReport> {
    let started = std::time::Instant::now();
    let ctx = SessionContext::new();
    let silver = Arc::new(MemorySchemaProvider::new());
    let gold = Arc::new(MemorySchemaProvider::new());
    let catalog = ctx
        .catalog("datafusion")
        .expect("a default SessionContext has the datafusion catalog");
    // Registering a schema only fails for catalogs that do not support it.
    let _previous = catalog
        .register_schema(SILVER, silver.clone())
        .map_err(|source| Error::Source { table: "*", source })?;
    let _previous = catalog
        .register_schema(GOLD, gold.clone())
        .map_err(|source| Error::Source { table: "*", source })?;

    let mut report = MartsReport::default();
    // `Lake::open` reports a missing folder as an error rather than `None`,
    // so existence is decided by the listing.
    let present = lake.list_tables(SILVER).await?;
    for table in SOURCES {
        if !present.iter().any(|t| t == table) {
            return Err(Error::MissingSource(table));
        }
        let delta = lake
            .open(SILVER, table)
            .await?
            .ok_or(Error::MissingSource(table))?;
        let version = delta.version();
        let provider = delta
            .table_provider()
            .await
            .map_err(|source| Error::Source { table, source })?;
        silver
            .register_table(table.to_string(), provider)
            .map_err(|source| Error::Source { table, source })?;
        report.sources.push((table, version));
    }

    for model in MODELS {
        let model_started = std::time::Instant::now();
        let frame = ctx.sql(model.sql).await.map_err(|source| Error::Model {
            model: model.name,
            source,
        })?;
        let planned: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(|source| Error::Model {
            model: model.name,
            source,
        })?;
        let (schema, batches) = for_delta(model.name, &planned, batches)?;
        let rows = batches.iter().map(RecordBatch::num_rows).sum();
        let version = write_gold(lake, model.name, &schema, batches.clone()).await?;
        // Later models read this build's rows, not whatever gold held before.
        let table = MemTable::try_new(schema, vec![batches]).map_err(|source| Error::Model {
            model: model.name,
            source,
        })?;
        gold.register_table(model.name.to_string(), Arc::new(table))
            .map_err(|source| Error::Model {
                model: model.name,
                source,
            })?;
        tracing::info!(
            table = model.name,
            rows,
            version = ?version,
            elapsed_ms = model_started.elapsed().as_millis() as u64,
            "gold table rebuilt"
        );
        report.tables.push(MartTable {
            name: model.name,
            rows,
            version,
        });
    }
    tracing::info!(
        tables = report.tables.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "marts built"
    );
    Ok(report)
}

/// Replaces `gold.<table>` with `batches` in one commit.
async fn write_gold(
    lake: &Lake,
    table: &'static str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Option<u64>> {
    let exists = lake.list_tables(GOLD).await?.iter().any(|t| t == table);
    let existing = if exists {
        lake.open(GOLD, table).await?
    } else {
        None
    };
    let handle = match existing {
        Some(existing) => existing,
        None => lake.table_handle(GOLD, table)?,
    };
    // An empty result still has to create or replace the table with its schema.
    let batches = if batches.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        batches
    };
    let written = handle
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(SchemaMode::Overwrite)
        .with_table_name(table)
        .await
        .map_err(|source| Error::Write { table, source })?;
    Ok(written.version())
}

/// Casts view types (`Utf8View`, `BinaryView`) that DataFusion produces to
/// the plain types, so gold schemas are the same whatever the reader config
/// and open in every Delta reader.
fn for_delta(
    table: &'static str,
    schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let plain = |t: &DataType| match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    };
    let target: SchemaRef = Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| Field::new(f.name(), plain(f.data_type()), f.is_nullable()))
            .collect::<Vec<_>>(),
    ));
    let arrow_err = |source| Error::Arrow { table, source };
    let mut out = Vec::with_capacity(batches.len());
    for batch in batches {
        let columns = batch
            .columns()
            .iter()
            .zip(target.fields())
            .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_err)?;
        out.push(RecordBatch::try_new(target.clone(), columns).map_err(arrow_err)?);
    }
    Ok((target, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_come_after_their_dependencies() {
        let models = models();
        for (i, m) in models.iter().enumerate() {
            for dep in &m.depends_on {
                if let Some(table) = dep.strip_prefix("silver.") {
                    assert!(
                        SOURCES.contains(&table),
                        "{} reads unregistered {dep}",
                        m.name
                    );
                } else {
                    let at = models.iter().position(|o| o.name == *dep);
                    assert!(
                        at.is_some_and(|at| at < i),
                        "{} depends on {dep} built later",
                        m.name
                    );
                }
            }
        }
        let names: Vec<_> = models.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "dim_date",
                "dim_customer",
                "dim_product",
                "fct_order_line",
                "agg_daily_sales"
            ]
        );
    }

    #[test]
    fn report_lists_tables_with_rows() {
        let report = MartsReport {
            sources: vec![("orders", Some(3))],
            tables: vec![MartTable {
                name: "dim_date",
                rows: 4,
                version: Some(0),
            }],
        };
        let text = report.to_string();
        assert!(text.contains("orders@v3"), "{text}");
        assert!(text.contains("gold.dim_date"), "{text}");
        assert!(text.contains("4 rows"), "{text}");
    }
}
