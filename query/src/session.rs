//! The DataFusion session over the lake.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, TableProvider};
use datafusion::execution::context::{SQLOptions, SessionConfig, SessionContext};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::parser::{DFParserBuilder, Statement};
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect};
use tributary_lake::Lake;
use tributary_model::domain::LAYERS;

use crate::config::SqlConfig;
use crate::lake_schema::LakeSchema;
use crate::result_cache::{CacheStats, READS, Read, ResultCache, keepable};
use crate::time_travel::{AT_FUNCTION, Snapshots, TimeTravelFunction, VERSION_FUNCTION};
use crate::{Error, Result};

/// The catalog name tables are registered under (`datafusion.silver.orders`).
pub(crate) const CATALOG: &str = "datafusion";
/// The schema unqualified names resolve in: analysts mostly query current state.
pub const DEFAULT_SCHEMA: &str = "silver";

/// One statement's result: its schema (also for empty results) and rows.
pub type QueryResult = (SchemaRef, Vec<RecordBatch>);

/// A read-only SQL session over every layer of the lake.
///
/// Cheap to share by reference; tables are opened per statement, so the
/// session never needs re-registering when pipelines commit.
pub struct Session {
    ctx: SessionContext,
    lake: Lake,
    schemas: Vec<Arc<LakeSchema>>,
    snapshots: Arc<Snapshots>,
    results: ResultCache,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("lake", &self.lake.root().as_str())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Builds the context with the default `[sql]` settings.
    pub async fn new(lake: Lake) -> Result<Session> {
        Session::with_config(lake, &SqlConfig::default()).await
    }

    /// Builds the context: catalog `datafusion` with one schema per layer,
    /// `silver` as the default schema, `information_schema` enabled, the
    /// time-travel table functions, and the memory pool and spill settings
    /// of `sql`.
    pub async fn with_config(lake: Lake, sql: &SqlConfig) -> Result<Session> {
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG, DEFAULT_SCHEMA)
            .with_information_schema(true);
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(bytes) = sql.memory_limit_bytes() {
            runtime = runtime.with_memory_limit(bytes, 1.0);
        }
        let disk = match (&sql.spill, &sql.spill_dir) {
            (false, _) => DiskManagerMode::Disabled,
            (true, Some(dir)) => {
                std::fs::create_dir_all(dir)?;
                DiskManagerMode::Directories(vec![dir.clone()])
            }
            (true, None) => DiskManagerMode::OsTmpDirectory,
        };
        runtime = runtime.with_disk_manager_builder(DiskManagerBuilder::default().with_mode(disk));
        let runtime = runtime.build_arc()?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let snapshots = Arc::new(Snapshots::default());
        for name in [VERSION_FUNCTION, AT_FUNCTION] {
            ctx.register_udtf(
                name,
                Arc::new(TimeTravelFunction {
                    name,
                    snapshots: snapshots.clone(),
                }),
            );
        }
        let catalog = MemoryCatalogProvider::new();
        let mut schemas = Vec::with_capacity(LAYERS.len());
        for layer in LAYERS {
            let schema = Arc::new(LakeSchema::new(lake.clone(), layer));
            catalog.register_schema(layer, schema.clone())?;
            schemas.push(schema);
        }
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        let session = Session {
            ctx,
            lake,
            schemas,
            snapshots,
            results: ResultCache::new(sql.result_cache_bytes()),
        };
        session.refresh().await?;
        Ok(session)
    }

    /// The lake this session reads.
    pub fn lake(&self) -> &Lake {
        &self.lake
    }

    /// The lake's layer schemas, for catalogs built over them.
    pub(crate) fn layer_schemas(&self) -> Vec<Arc<LakeSchema>> {
        self.schemas.clone()
    }

    /// The underlying DataFusion context (for registering extra functions).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Re-lists every layer, so `information_schema` and `SHOW TABLES` see
    /// tables created since the last statement. Returns `(layer, table)`.
    pub async fn refresh(&self) -> Result<Vec<(&'static str, String)>> {
        let mut all = Vec::new();
        for schema in &self.schemas {
            for name in schema.refresh().await? {
                all.push((schema.layer(), name));
            }
        }
        Ok(all)
    }

    /// Runs one statement and returns its rows.
    pub async fn sql(&self, query: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.sql_with_schema(query).await?.1)
    }

    /// Runs one statement and returns its schema and rows.
    pub async fn sql_with_schema(&self, query: &str) -> Result<QueryResult> {
        let mut statements = parse(query)?;
        if statements.len() != 1 {
            return Err(Error::Sql(datafusion::error::DataFusionError::Plan(
                format!("expected one SQL statement, found {}", statements.len()),
            )));
        }
        let statement = statements.remove(0);
        self.run(statement).await
    }

    /// Runs every `;`-separated statement in order, stopping at the first
    /// error. Splitting uses the SQL parser, so `;` inside strings is safe.
    pub async fn sql_many(&self, text: &str) -> Result<Vec<QueryResult>> {
        let mut results = Vec::new();
        for statement in parse(text)? {
            results.push(self.run(statement).await?);
        }
        Ok(results)
    }

    /// Resolves `table` or `layer.table` (unqualified: `silver` first, then
    /// the other layers) to its layer, name and provider at the latest version.
    pub async fn resolve_table(
        &self,
        name: &str,
    ) -> Result<(&'static str, String, Arc<dyn TableProvider>)> {
        let lowered = name.trim().trim_end_matches(';').to_ascii_lowercase();
        let (layer, table) = match lowered.split_once('.') {
            Some((layer, table)) => (Some(layer.to_string()), table.to_string()),
            None => (None, lowered.clone()),
        };
        let mut order: Vec<&Arc<LakeSchema>> = self.schemas.iter().collect();
        order.sort_by_key(|s| s.layer() != DEFAULT_SCHEMA);
        for schema in order {
            if layer.as_deref().is_some_and(|l| l != schema.layer()) {
                continue;
            }
            if let Some(provider) = schema.open(&table).await? {
                return Ok((schema.layer(), table, provider));
            }
        }
        Err(Error::TableNotFound(name.trim().to_string()))
    }

    pub(crate) async fn run(&self, statement: Statement) -> Result<QueryResult> {
        let key = (self.results.enabled() && is_query(&statement)).then(|| statement.to_string());
        let Some(key) = key else {
            if matches!(&statement, Statement::Statement(s) if matches!(**s, SqlStatement::Set(_)))
            {
                // Settings may change what the same text answers.
                self.results.clear();
            }
            let plan = self.plan(statement).await?;
            return self.execute(plan).await;
        };
        if let Some(kept) = self.results.get(&key, &self.lake).await {
            tracing::debug!(statement = %key, "answered from the result cache");
            return Ok(kept);
        }
        self.refresh().await?;
        let (plan, reads) = self.plan_listed_reads(statement).await?;
        let keep = self.keepable(&plan, &reads);
        let result = self.execute(plan).await?;
        if keep {
            self.results.put(key, reads, &result);
        }
        Ok(result)
    }

    /// [`Session::plan_listed`], with the lake tables the plan opened and
    /// their versions.
    pub(crate) async fn plan_listed_reads(
        &self,
        statement: Statement,
    ) -> Result<(LogicalPlan, Vec<Read>)> {
        let reads = Arc::default();
        let plan = READS
            .scope(Arc::clone(&reads), self.plan_listed(statement))
            .await?;
        let reads = std::mem::take(&mut *reads.lock().unwrap_or_else(|e| e.into_inner()));
        Ok((plan, reads))
    }

    /// Whether the result of `plan`, which opened `reads`, may be kept in
    /// the result cache (see [`crate::result_cache`]).
    pub(crate) fn keepable(&self, plan: &LogicalPlan, reads: &[Read]) -> bool {
        if !self.results.enabled() {
            return false;
        }
        let state = self.ctx.state_ref();
        let state = state.read();
        keepable(plan, reads, &state.config_options().catalog.default_schema)
    }

    /// The result cache, for the wire server's executions.
    pub(crate) fn results(&self) -> &ResultCache {
        &self.results
    }

    /// The result cache's counters (see [`crate::result_cache`]).
    pub fn cache_stats(&self) -> CacheStats {
        self.results.stats()
    }

    /// Plans one parsed statement against the newest table listing, with
    /// time-travel references opened. `$1`-style placeholders stay in the
    /// plan (see [`LogicalPlan::with_param_values`]).
    pub async fn plan(&self, statement: Statement) -> Result<LogicalPlan> {
        self.refresh().await?;
        self.plan_listed(statement).await
    }

    /// [`Session::plan`] for a caller that has just called
    /// [`Session::refresh`] (the wire server, which needs the listing for
    /// its rewrites): the layers are not listed a second time.
    pub(crate) async fn plan_listed(&self, statement: Statement) -> Result<LogicalPlan> {
        self.snapshots
            .preload(&self.lake, &statement.to_string())
            .await?;
        let state = self.ctx.state();
        let plan = state.statement_to_plan(statement).await?;
        // The lake is written only by the pipelines: a console user must not
        // be able to create, insert into or drop lake tables by accident.
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .verify_plan(&plan)?;
        Ok(plan)
    }

    /// Executes a plan and collects its rows.
    pub async fn execute(&self, plan: LogicalPlan) -> Result<QueryResult> {
        let started = std::time::Instant::now();
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        tracing::debug!(
            rows,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "statement done"
        );
        Ok((schema, batches))
    }
}

/// Whether `statement` is a query (`SELECT`, `WITH`, `VALUES`): the only
/// statements whose results the cache keeps.
pub(crate) fn is_query(statement: &Statement) -> bool {
    matches!(statement, Statement::Statement(s) if matches!(**s, SqlStatement::Query(_)))
}

/// Splits text into statements with DataFusion's parser (generic dialect).
pub(crate) fn parse(text: &str) -> Result<Vec<Statement>> {
    parse_with(text, &GenericDialect {})
}

/// Splits text into statements in PostgreSQL's dialect (`::` casts, `~`),
/// for clients of the wire server.
pub(crate) fn parse_postgres(text: &str) -> Result<Vec<Statement>> {
    parse_with(text, &PostgreSqlDialect {})
}

fn parse_with(text: &str, dialect: &dyn Dialect) -> Result<Vec<Statement>> {
    let statements = DFParserBuilder::new(text)
        .with_dialect(dialect)
        .build()?
        .parse_statements()?;
    if statements.is_empty() {
        return Err(Error::Sql(datafusion::error::DataFusionError::Plan(
            "no SQL statement in the input".into(),
        )));
    }
    Ok(statements.into_iter().collect())
}
