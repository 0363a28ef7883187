//! The gold star schema, built incrementally from bronze and silver.
//!
//! A run:
//! 1. pins every source table at its current Delta version and reads the
//!    watermark of the last successful run (see [`watermark`]);
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
//! [`keys`]); facts find "the version valid at the event time" through the
//! `customer_key_at` / `product_key_at` SQL functions.

mod checks;
mod history;
mod keys;
mod models;
mod watermark;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Int32Array, Int64Array, RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::datasource::{MemTable, TableProvider};
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::DeltaTable;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use tributary_lake::Lake;

pub use checks::{DataTest, DataTestReport, Failure, data_tests};
pub use history::BadChange;
pub use models::{ModelInfo, ModelKind, models};

use crate::{Error, Result};
use history::{DIM_CUSTOMER, DIM_PRODUCT, DimSpec};
use keys::{KeyIndex, column};
use models::{FACTS, Fact};
use watermark::{Source, Watermark};

const GOLD: &str = "gold";

/// Every gold table, in commit order.
const TABLES: [&str; 8] = [
    "dim_customer",
    "dim_product",
    "fct_order_status_event",
    "fct_payment",
    "fct_order_line",
    "fct_order_fulfillment",
    "agg_daily_sales",
    "dim_date",
];

/// Source tables a run reads; `required` ones must exist.
const SOURCES: &[(&str, &str, bool)] = &[
    ("bronze", "products", true),
    ("bronze", "customers", true),
    ("bronze", "orders", true),
    ("bronze", "payments", false),
    ("silver", "orders", true),
    ("silver", "order_items", true),
    ("silver", "payments", false),
    ("silver", "shipments", false),
];

/// Above this many rebuilt ids a table is overwritten instead of patched
/// with `replaceWhere` (a predicate with that many literals costs more than
/// it saves).
const MAX_REPLACE_IDS: usize = 20_000;

/// How to run a build.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Rebuild every table from all of bronze and silver.
    pub full_refresh: bool,
    /// Fault injection for tests: fail the run after this many gold commits
    /// (0 = after the data tests, before the first commit).
    #[doc(hidden)]
    pub fail_after_commits: Option<usize>,
}

/// Why a run was incremental or full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Rebuilt what changed since run `since`.
    Incremental { since: i64 },
    /// Rebuilt everything, for the reason given.
    Full { reason: String },
}

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

/// What a build read and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MartsReport {
    /// The run's number, recorded in every gold commit.
    pub run: i64,
    pub mode: Mode,
    /// `(layer.table, version read)`.
    pub sources: Vec<(String, Option<u64>)>,
    /// Gold tables in commit order.
    pub tables: Vec<MartTable>,
    pub tests_passed: usize,
    pub elapsed_ms: u64,
}

impl MartsReport {
    /// Rows in `table` after the build.
    pub fn rows(&self, table: &str) -> Option<usize> {
        self.tables.iter().find(|t| t.name == table).map(|t| t.rows)
    }

    /// Rows the build wrote to `table`.
    pub fn written(&self, table: &str) -> Option<usize> {
        self.tables
            .iter()
            .find(|t| t.name == table)
            .map(|t| t.written)
    }
}

impl fmt::Display for MartsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Incremental { since } => writeln!(
                f,
                "marts run {}: incremental since run {since}, {} ms",
                self.run, self.elapsed_ms
            )?,
            Mode::Full { reason } => writeln!(
                f,
                "marts run {}: full refresh ({reason}), {} ms",
                self.run, self.elapsed_ms
            )?,
        }
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(name, v)| {
                format!(
                    "{name}@v{}",
                    v.map_or_else(|| "-".into(), |v| v.to_string())
                )
            })
            .collect();
        writeln!(f, "read: {}", sources.join(", "))?;
        let width = self.tables.iter().map(|t| t.name.len()).max().unwrap_or(0) + "gold.".len();
        for t in &self.tables {
            let name = format!("gold.{}", t.name);
            let version = t.version.map_or_else(|| "?".into(), |v| v.to_string());
            writeln!(
                f,
                "{name:<width$}  {:>10} rows  {:>8} written  (version {version})",
                t.rows, t.written
            )?;
        }
        write!(f, "data tests: {} passed", self.tests_passed)
    }
}

/// Builds the marts incrementally (see the module docs).
pub async fn build_marts(lake: &Lake) -> Result<MartsReport> {
    build_marts_with(lake, &BuildOptions::default()).await
}

/// Runs the data tests over the gold tables as they are in the lake.
pub async fn test_marts(lake: &Lake) -> Result<DataTestReport> {
    let ctx = session();
    let silver = schema(&ctx, "silver")?;
    let gold = schema(&ctx, GOLD)?;
    for (layer, table, required) in SOURCES {
        if *layer != "silver" {
            continue;
        }
        match open(lake, layer, table).await? {
            Some(t) => put(&silver, table, provider(&t, table).await?)?,
            None if *required => return Err(Error::MissingSource { layer, table }),
            None => put(&silver, table, empty_silver(table))?,
        }
    }
    for table in TABLES {
        let t = open(lake, GOLD, table)
            .await?
            .ok_or(Error::MissingSource { layer: GOLD, table })?;
        put(&gold, table, provider(&t, table).await?)?;
    }
    checks::run(&ctx).await
}

/// Builds the marts; see [`BuildOptions`].
pub async fn build_marts_with(lake: &Lake, options: &BuildOptions) -> Result<MartsReport> {
    let started = Instant::now();
    let ctx = session();

    // 1. Pin the sources and read the last run's watermark.
    let mut sources: Vec<Source> = Vec::new();
    for (layer, table, required) in SOURCES {
        let t = open(lake, layer, table).await?;
        if t.is_none() && *required {
            return Err(Error::MissingSource { layer, table });
        }
        sources.push(Source::new(layer, table, t));
    }
    let previous = watermark::read(lake, &TABLES).await?;
    let definition = models::definition_hash();
    let mut mode = match (&previous, options.full_refresh) {
        (_, true) => Mode::Full {
            reason: "--full-refresh".into(),
        },
        (Err(reason), _) => Mode::Full {
            reason: reason.clone(),
        },
        (Ok(w), _) if w.definition != definition => Mode::Full {
            reason: "model definitions changed".into(),
        },
        (Ok(w), _) => Mode::Incremental { since: w.run },
    };
    let run = previous.as_ref().map_or(0, |w| w.run) + 1;

    // 2. What changed since the watermark; a source whose history cannot be
    //    read that far back turns the run into a full refresh.
    if let (Mode::Incremental { .. }, Ok(w)) = (&mode, &previous) {
        for s in &mut sources {
            if let Err(reason) = s.diff(w.version(s.name())).await {
                mode = Mode::Full { reason };
                break;
            }
        }
    }
    let full = matches!(mode, Mode::Full { .. });
    tracing::info!(run, mode = ?mode, "marts run started");

    let bronze = schema(&ctx, "bronze")?;
    let silver = schema(&ctx, "silver")?;
    let new = schema(&ctx, "new")?;
    let changed = schema(&ctx, "changed")?;
    let prev = schema(&ctx, "prev")?;
    let gold = schema(&ctx, GOLD)?;
    let stage = schema(&ctx, "stage")?;
    schema(&ctx, "scope")?;
    for s in &sources {
        let current = s.current(&ctx).await?;
        match s.layer {
            "bronze" => {
                put(&bronze, s.table, current)?;
                put(&new, s.table, s.added(&ctx, full).await?)?;
            }
            _ => {
                let current = match s.delta {
                    Some(_) => current,
                    None => empty_silver(s.table),
                };
                put(&silver, s.table, current)?;
                put(&changed, s.table, s.changed(&ctx, full).await?)?;
            }
        }
    }
    if !full {
        for table in TABLES {
            let t = open(lake, GOLD, table)
                .await?
                .ok_or(Error::MissingSource { layer: GOLD, table })?;
            put(&prev, table, provider(&t, table).await?)?;
        }
    }
    let stage_orders = sql(&ctx, "stage.orders", models::STAGE_ORDERS).await?;
    put(
        &stage,
        "orders",
        Arc::new(mem(stage_orders.0, stage_orders.1)?),
    )?;

    // 3. Dimensions, then facts, then the calendar.
    let mut outputs: Vec<Output> = Vec::new();
    for spec in [&DIM_CUSTOMER, &DIM_PRODUCT] {
        let (out, ids) = dimension(&ctx, spec, full).await?;
        let index = KeyIndex::from_batches(&out.post, spec.key, spec.id).map_err(|source| {
            Error::Model {
                model: spec.table,
                source,
            }
        })?;
        let udf = if spec.table == "dim_customer" {
            "customer_key_at"
        } else {
            "product_key_at"
        };
        ctx.register_udf(keys::key_lookup_udf(udf, Arc::new(index)));
        let scope_name = if spec.table == "dim_customer" {
            "customers"
        } else {
            "products"
        };
        register_ids(&ctx, scope_name, &ids)?;
        put(
            &gold,
            spec.table,
            Arc::new(mem(out.schema.clone(), out.post.clone())?),
        )?;
        outputs.push(out);
    }

    let status = stage_history(&ctx, "orders", full, history::order_status_changes).await?;
    put(
        &stage,
        "order_status_changes",
        Arc::new(mem(status.0.schema(), vec![status.0])?),
    )?;
    let payments = stage_history(&ctx, "payments", full, history::payment_events).await?;
    put(
        &stage,
        "payment_events",
        Arc::new(mem(payments.0.schema(), vec![payments.0])?),
    )?;

    let line_orders = if full {
        BTreeSet::new()
    } else {
        ids(
            &ctx,
            "SELECT id FROM changed.orders UNION SELECT order_id FROM changed.order_items",
        )
        .await?
    };
    let mut fulfillment_orders = line_orders.clone();
    fulfillment_orders.extend(&status.1);
    if !full {
        fulfillment_orders.extend(
            ids(
                &ctx,
                "SELECT order_id FROM changed.payments UNION SELECT order_id FROM changed.shipments",
            )
            .await?,
        );
    }
    for fact in FACTS {
        let scope = match fact.name {
            "fct_order_status_event" => status.1.clone(),
            "fct_payment" => payments.1.clone(),
            "fct_order_line" => line_orders.clone(),
            "fct_order_fulfillment" => fulfillment_orders.clone(),
            "agg_daily_sales" if !full => {
                // Days of the lines rebuilt, before and after.
                let lines = outputs
                    .iter()
                    .find(|o| o.name == "fct_order_line")
                    .expect("lines are built before the aggregate");
                register_ids(&ctx, "lines", &lines.replaced_ids())?;
                let mut days = ids(
                    &ctx,
                    "SELECT date_key FROM prev.fct_order_line WHERE order_id IN (SELECT id FROM scope.lines)",
                )
                .await?;
                days.extend(
                    ids(
                        &ctx,
                        "SELECT date_key FROM gold.fct_order_line WHERE order_id IN (SELECT id FROM scope.lines)",
                    )
                    .await?,
                );
                days
            }
            _ => BTreeSet::new(),
        };
        let out = build_fact(&ctx, fact, full, &scope).await?;
        put(
            &gold,
            fact.name,
            Arc::new(mem(out.schema.clone(), out.post.clone())?),
        )?;
        outputs.push(out);
    }
    let calendar = dim_date(&ctx).await?;
    put(
        &gold,
        "dim_date",
        Arc::new(mem(calendar.schema(), vec![calendar.clone()])?),
    )?;
    outputs.push(Output {
        name: "dim_date",
        schema: calendar.schema(),
        post: vec![calendar],
        write: Write::Overwrite,
    });

    // 4. Data tests over the new state; nothing is written when one fails.
    let report = checks::run(&ctx).await?;
    if !report.ok() {
        return Err(Error::DataTests(report));
    }

    // 5. One commit per table, each carrying the run's watermark.
    let watermark = Watermark {
        run,
        definition,
        versions: sources
            .iter()
            .filter_map(|s| s.version().map(|v| (s.name(), v as i64)))
            .collect(),
    };
    let mut tables = Vec::new();
    for (i, out) in outputs.into_iter().enumerate() {
        if options.fail_after_commits == Some(i) {
            return Err(Error::Injected(i));
        }
        let rows = out.post.iter().map(RecordBatch::num_rows).sum();
        let (version, written) = commit(lake, &out, full, &watermark).await?;
        tracing::info!(table = out.name, rows, written, version = ?version, "gold table committed");
        tables.push(MartTable {
            name: out.name,
            rows,
            written,
            version,
        });
    }
    let report = MartsReport {
        run,
        mode,
        sources: sources.iter().map(|s| (s.name(), s.version())).collect(),
        tables,
        tests_passed: report.passed,
        elapsed_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(run, elapsed_ms = report.elapsed_ms, "marts built");
    Ok(report)
}

/// A gold table's new state and how to write it.
struct Output {
    name: &'static str,
    schema: SchemaRef,
    /// The whole table after the run.
    post: Vec<RecordBatch>,
    write: Write,
}

enum Write {
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
    fn replaced_ids(&self) -> BTreeSet<i64> {
        match &self.write {
            Write::Replace { ids, .. } => ids.clone(),
            Write::Overwrite => BTreeSet::new(),
        }
    }
}

/// The whole history of every row of `bronze.<source>` with a new change
/// (of every row on a full refresh, or when a new truncate closes them all).
async fn changed_chains(
    ctx: &SessionContext,
    source: &'static str,
    full: bool,
) -> Result<std::collections::BTreeMap<String, Vec<history::Change>>> {
    let truncated = !full
        && !ids_text(
            ctx,
            &format!("SELECT op FROM new.{source} WHERE op = 't' LIMIT 1"),
        )
        .await?
        .is_empty();
    let everything = full || truncated;
    let query = if everything {
        format!("SELECT {} FROM bronze.{source}", history::BRONZE_COLUMNS)
    } else {
        format!(
            "SELECT {} FROM bronze.{source} WHERE key IN (SELECT key FROM new.{source}) OR op = 't'",
            history::BRONZE_COLUMNS
        )
    };
    let (_, batches) = sql(ctx, source, &query).await?;
    let mut chains = history::chains(history::read_changes(&batches)?);
    if !everything {
        let new_keys = ids_text(ctx, &format!("SELECT DISTINCT key FROM new.{source}")).await?;
        chains.retain(|k, _| new_keys.contains(k));
    }
    Ok(chains)
}

/// A dimension's new state and the natural ids that got new versions.
async fn dimension(
    ctx: &SessionContext,
    spec: &DimSpec,
    full: bool,
) -> Result<(Output, BTreeSet<i64>)> {
    let chains = changed_chains(ctx, spec.source, full).await?;
    let versions = spec.versions(&chains, full)?;
    let schema = spec.schema();
    if full {
        let out = Output {
            name: spec.table,
            schema,
            post: vec![versions],
            write: Write::Overwrite,
        };
        return Ok((out, BTreeSet::new()));
    }
    let changed: BTreeSet<i64> = column::<Int64Array>(&versions, spec.id, &DataType::Int64)
        .map_err(|source| Error::Model {
            model: spec.table,
            source,
        })?
        .values()
        .iter()
        .copied()
        .collect();
    register_ids(ctx, "derive", &changed)?;
    let (_, kept) = sql(
        ctx,
        spec.table,
        &format!(
            "SELECT * FROM prev.{} WHERE {} NOT IN (SELECT id FROM scope.derive)",
            spec.table, spec.id
        ),
    )
    .await?;
    let mut post = conform(spec.table, &schema, kept)?;
    post.push(versions.clone());
    let out = Output {
        name: spec.table,
        schema,
        post,
        write: Write::Replace {
            column: spec.id,
            ids: changed.clone(),
            rows: vec![versions],
        },
    };
    Ok((out, changed))
}

/// Builds a bronze history stage (status changes, payment events) for the
/// rows with new changes; returns it with the ids it covers (the fact's
/// scope column: order ids or payment ids).
async fn stage_history(
    ctx: &SessionContext,
    source: &'static str,
    full: bool,
    build: fn(&std::collections::BTreeMap<String, Vec<history::Change>>) -> Result<RecordBatch>,
) -> Result<(RecordBatch, BTreeSet<i64>)> {
    let chains = changed_chains(ctx, source, full).await?;
    let stage = build(&chains)?;
    let id_column = if source == "orders" {
        "order_id"
    } else {
        "payment_id"
    };
    let ids = column::<Int64Array>(&stage, id_column, &DataType::Int64)
        .map_err(|source| Error::Model {
            model: "bronze history",
            source,
        })?
        .values()
        .iter()
        .copied()
        .collect();
    Ok((stage, ids))
}

/// Runs a fact model for `scope` (all rows on a full refresh), re-keys the
/// previous rows whose dimensions changed, and merges both into the new state.
async fn build_fact(
    ctx: &SessionContext,
    fact: &Fact,
    full: bool,
    scope: &BTreeSet<i64>,
) -> Result<Output> {
    let filter = match (full, fact.scope_expr) {
        (false, Some(expr)) => format!("{expr} IN (SELECT id FROM scope.derive)"),
        _ => "TRUE".into(),
    };
    register_ids(ctx, "derive", scope)?;
    let (planned, derived) = sql(ctx, fact.name, &fact.sql.replace("{scope}", &filter)).await?;
    let schema = plain_schema(&planned);
    let derived = conform(fact.name, &schema, derived)?;
    if full {
        return Ok(Output {
            name: fact.name,
            schema,
            post: derived,
            write: Write::Overwrite,
        });
    }
    let column = fact.scope_column;
    let rekey_ids = if fact.rekey.is_empty() {
        BTreeSet::new()
    } else {
        ids(
        ctx,
        &format!(
            "SELECT {column} FROM prev.{name} WHERE ({when}) AND {column} NOT IN (SELECT id FROM scope.derive)",
            name = fact.name,
            when = fact.rekey_when
        ),
        )
        .await?
    };
    register_ids(ctx, "rekey", &rekey_ids)?;
    let select: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name();
            match fact.rekey.iter().find(|(c, _)| c == name) {
                Some((_, expr)) => format!("{expr} AS {name}"),
                None => format!("f.{name} AS {name}"),
            }
        })
        .collect();
    let rekeyed = if rekey_ids.is_empty() {
        vec![]
    } else {
        sql(
            ctx,
            fact.name,
            &format!(
                "SELECT {} FROM prev.{} f LEFT JOIN stage.orders o ON o.id = f.order_id \
                 WHERE f.{column} IN (SELECT id FROM scope.rekey)",
                select.join(", "),
                fact.name
            ),
        )
        .await?
        .1
    };
    let (_, kept) = sql(
        ctx,
        fact.name,
        &format!(
            "SELECT * FROM prev.{} WHERE {column} NOT IN (SELECT id FROM scope.derive) \
             AND {column} NOT IN (SELECT id FROM scope.rekey)",
            fact.name
        ),
    )
    .await?;
    let mut rows = derived;
    rows.extend(conform(fact.name, &schema, rekeyed)?);
    let mut post = conform(fact.name, &schema, kept)?;
    post.extend(rows.iter().cloned());
    let mut replaced = scope.clone();
    replaced.extend(rekey_ids);
    Ok(Output {
        name: fact.name,
        schema,
        post,
        write: Write::Replace {
            column,
            ids: replaced,
            rows,
        },
    })
}

/// Every day of every year the facts touch, plus the Unknown date (-1).
async fn dim_date(ctx: &SessionContext) -> Result<RecordBatch> {
    let (_, batches) = sql(
        ctx,
        "dim_date",
        "SELECT MIN(k) AS lo, MAX(k) AS hi FROM (
             SELECT date_key AS k FROM gold.fct_order_line WHERE date_key > 0
             UNION ALL SELECT date_key FROM gold.fct_order_status_event WHERE date_key > 0
             UNION ALL SELECT date_key FROM gold.fct_payment WHERE date_key > 0
             UNION ALL SELECT placed_date_key FROM gold.fct_order_fulfillment WHERE placed_date_key > 0
             UNION ALL SELECT paid_date_key FROM gold.fct_order_fulfillment WHERE paid_date_key > 0
             UNION ALL SELECT shipped_date_key FROM gold.fct_order_fulfillment WHERE shipped_date_key > 0
             UNION ALL SELECT delivered_date_key FROM gold.fct_order_fulfillment WHERE delivered_date_key > 0
             UNION ALL SELECT cancelled_date_key FROM gold.fct_order_fulfillment WHERE cancelled_date_key > 0
             UNION ALL SELECT refunded_date_key FROM gold.fct_order_fulfillment WHERE refunded_date_key > 0
         )",
    )
    .await?;
    let range = batches.first().and_then(|b| {
        let lo = column::<Int64Array>(b, "lo", &DataType::Int64).ok()?;
        let hi = column::<Int64Array>(b, "hi", &DataType::Int64).ok()?;
        (!lo.is_null(0) && !hi.is_null(0)).then(|| (lo.value(0) / 10_000, hi.value(0) / 10_000))
    });
    let mut days: Vec<chrono::NaiveDate> = Vec::new();
    if let Some((first, last)) = range {
        let mut day = chrono::NaiveDate::from_ymd_opt(first as i32, 1, 1).unwrap_or_default();
        let end = chrono::NaiveDate::from_ymd_opt(last as i32, 12, 31).unwrap_or_default();
        while day <= end {
            days.push(day);
            day = day.succ_opt().unwrap_or(end);
            if day == end && days.last() == Some(&end) {
                break;
            }
        }
    }
    use chrono::Datelike;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default();
    let int = |f: &dyn Fn(&chrono::NaiveDate) -> i32| -> ArrayRef {
        Arc::new(Int32Array::from_iter(
            std::iter::once(None).chain(days.iter().map(|d| Some(f(d)))),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from_iter_values(
            std::iter::once(-1).chain(
                days.iter()
                    .map(|d| d.year() * 10_000 + d.month() as i32 * 100 + d.day() as i32),
            ),
        )),
        Arc::new(Date32Array::from_iter(std::iter::once(None).chain(
            days.iter().map(|d| Some((*d - epoch).num_days() as i32)),
        ))),
        int(&|d| d.year()),
        int(&|d| (d.month() as i32 - 1) / 3 + 1),
        int(&|d| d.month() as i32),
        int(&|d| d.day() as i32),
        int(&|d| d.weekday().number_from_monday() as i32),
        Arc::new(BooleanArray::from_iter(
            std::iter::once(None).chain(
                days.iter()
                    .map(|d| Some(d.weekday().number_from_monday() >= 6)),
            ),
        )),
    ];
    let schema = Arc::new(Schema::new(vec![
        Field::new("date_key", DataType::Int32, false),
        Field::new("date", DataType::Date32, true),
        Field::new("year", DataType::Int32, true),
        Field::new("quarter", DataType::Int32, true),
        Field::new("month", DataType::Int32, true),
        Field::new("day", DataType::Int32, true),
        Field::new("day_of_week", DataType::Int32, true),
        Field::new("is_weekend", DataType::Boolean, true),
    ]));
    RecordBatch::try_new(schema, columns).map_err(|source| Error::Arrow {
        table: "dim_date",
        source,
    })
}

/// Writes one gold table; returns the committed version and the rows written.
async fn commit(
    lake: &Lake,
    out: &Output,
    full: bool,
    watermark: &Watermark,
) -> Result<(Option<u64>, usize)> {
    let table = out.name;
    let handle = match open(lake, GOLD, table).await? {
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

fn session() -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_udf(keys::date_key_udf());
    ctx
}

/// Creates (or returns) the schema `name` in the default catalog.
fn schema(ctx: &SessionContext, name: &str) -> Result<Arc<dyn SchemaProvider>> {
    let catalog = ctx
        .catalog("datafusion")
        .expect("a default SessionContext has the datafusion catalog");
    if let Some(s) = catalog.schema(name) {
        return Ok(s);
    }
    let s: Arc<dyn SchemaProvider> = Arc::new(MemorySchemaProvider::new());
    catalog
        .register_schema(name, s.clone())
        .map_err(|source| Error::Source { table: "*", source })?;
    Ok(s)
}

/// Registers `provider` as `name`, replacing what was there.
fn put(
    schema: &Arc<dyn SchemaProvider>,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<()> {
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

/// Registers `scope.<name>(id BIGINT)`.
fn register_ids(ctx: &SessionContext, name: &str, ids: &BTreeSet<i64>) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(ids.iter().copied()))],
    )
    .map_err(|source| Error::Arrow {
        table: "scope",
        source,
    })?;
    let scope = schema_of(ctx, "scope");
    put(&scope, name, Arc::new(mem(schema, vec![batch])?))
}

fn schema_of(ctx: &SessionContext, name: &str) -> Arc<dyn SchemaProvider> {
    ctx.catalog("datafusion")
        .and_then(|c| c.schema(name))
        .expect("schemas are created at the start of a run")
}

fn mem(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<MemTable> {
    MemTable::try_new(schema, vec![batches]).map_err(|source| Error::Model {
        model: "in-memory table",
        source,
    })
}

/// Runs `query` and collects it, with the planned schema.
async fn sql(
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

/// The distinct integers of the first column of `query`.
async fn ids(ctx: &SessionContext, query: &str) -> Result<BTreeSet<i64>> {
    let (_, batches) = sql(ctx, "scope", query).await?;
    let mut out = BTreeSet::new();
    for b in &batches {
        let name = b.schema().field(0).name().clone();
        let values =
            column::<Int64Array>(b, &name, &DataType::Int64).map_err(|source| Error::Model {
                model: "scope",
                source,
            })?;
        out.extend(values.iter().flatten());
    }
    Ok(out)
}

/// The distinct strings of the first column of `query`.
async fn ids_text(ctx: &SessionContext, query: &str) -> Result<std::collections::HashSet<String>> {
    let (_, batches) = sql(ctx, "scope", query).await?;
    let mut out = std::collections::HashSet::new();
    for b in &batches {
        let name = b.schema().field(0).name().clone();
        let values =
            column::<arrow::array::StringArray>(b, &name, &DataType::Utf8).map_err(|source| {
                Error::Model {
                    model: "scope",
                    source,
                }
            })?;
        out.extend(values.iter().flatten().map(str::to_string));
    }
    Ok(out)
}

/// Plain Arrow types (no view types) and nullable columns: the gold
/// contract, the same whatever DataFusion planned and readable everywhere.
fn plain_schema(schema: &SchemaRef) -> SchemaRef {
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
fn conform(
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

async fn open(lake: &Lake, layer: &str, table: &str) -> Result<Option<DeltaTable>> {
    // `Lake::open` reports a missing folder on object stores as an error
    // rather than `None`, so existence is decided by the listing.
    if !lake.list_tables(layer).await?.iter().any(|t| t == table) {
        return Ok(None);
    }
    Ok(lake.open(layer, table).await?)
}

async fn provider(table: &DeltaTable, name: &'static str) -> Result<Arc<dyn TableProvider>> {
    table
        .table_provider()
        .await
        .map_err(|source| Error::Source {
            table: name,
            source,
        })
}

/// The columns the models read from an optional silver table that does not
/// exist yet (nothing ingested), empty.
fn empty_silver(table: &str) -> Arc<dyn TableProvider> {
    let ts = || DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, Some("UTC".into()));
    let fields = match table {
        "payments" => vec![
            Field::new("id", DataType::Int64, true),
            Field::new("order_id", DataType::Int64, true),
            Field::new("status", DataType::Utf8, true),
            Field::new("created_at", ts(), true),
            Field::new("updated_at", ts(), true),
        ],
        _ => vec![
            Field::new("id", DataType::Int64, true),
            Field::new("order_id", DataType::Int64, true),
            Field::new("shipped_at", ts(), true),
            Field::new("delivered_at", ts(), true),
        ],
    };
    let schema = Arc::new(Schema::new(fields));
    Arc::new(MemTable::try_new(schema, vec![vec![]]).expect("an empty table is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_come_after_their_dependencies() {
        let models = models();
        for (i, m) in models.iter().enumerate() {
            for dep in &m.depends_on {
                if let Some((layer, table)) = dep.split_once('.') {
                    assert!(
                        SOURCES.iter().any(|(l, t, _)| *l == layer && *t == table),
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
        assert_eq!(names, TABLES, "listing order is commit order");
    }

    #[test]
    fn report_lists_tables_with_rows() {
        let report = MartsReport {
            run: 2,
            mode: Mode::Incremental { since: 1 },
            sources: vec![("silver.orders".into(), Some(3))],
            tables: vec![MartTable {
                name: "dim_date",
                rows: 4,
                written: 1,
                version: Some(0),
            }],
            tests_passed: 30,
            elapsed_ms: 5,
        };
        let text = report.to_string();
        assert!(text.contains("incremental since run 1"), "{text}");
        assert!(text.contains("silver.orders@v3"), "{text}");
        assert!(text.contains("gold.dim_date"), "{text}");
        assert!(text.contains("4 rows"), "{text}");
    }
}
