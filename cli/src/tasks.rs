//! Tributary's own tasks for the workflows scheduler: the marts, their
//! data tests, compaction, verification, the risk profiles and SQL into a
//! gold table, run in this process on the platform's lake and sources
//! (shell tasks are the scheduler's own).

use anyhow::{Context, Result, bail};
use chrono::NaiveDate;
use tributary_stack::{Platform, checks};
use tributary_workflows::runner::{self, RunContext, Runner, TaskFuture};
use tributary_workflows::{Job, Task};

/// How often a continuous marts job looks for new bronze and silver
/// versions.
pub const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs tributary's tasks in this process, on the platform's lake and
/// sources.
pub struct TributaryRunner {
    platform: Platform,
}

impl TributaryRunner {
    pub fn new(platform: Platform) -> TributaryRunner {
        TributaryRunner { platform }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn chain(e: anyhow::Error) -> String {
    format!("{e:#}")
}

impl Runner for TributaryRunner {
    fn run(&self, job: &Job, ctx: RunContext) -> TaskFuture {
        let platform = self.platform.clone();
        let task = job.task.clone();
        let continuous = job.continuous;
        let name = job.name.clone();
        if let Task::Shell { command } = &task {
            return runner::shell(command, &ctx);
        }
        Box::pin(async move {
            let lake = platform.lake().map_err(err)?;
            match task {
                Task::Marts { full_refresh } if continuous => {
                    // Follows bronze and silver until the attempt is
                    // dropped (cancelled, or the lead lost).
                    let options = tributary_etl::BuildOptions {
                        full_refresh,
                        ..Default::default()
                    };
                    let mut rounds = 0u64;
                    tributary_etl::follow_marts(
                        &lake,
                        &options,
                        FOLLOW_EVERY,
                        tokio_util::sync::CancellationToken::new(),
                        |report| {
                            rounds += 1;
                            let line = report.to_string();
                            tracing::info!(job = %name, rounds, "{}", line.lines().next().unwrap_or(""));
                        },
                    )
                    .await
                    .map_err(|e| tributary_model::error_chain(&e))?;
                    Ok(format!("followed the stream for {rounds} builds"))
                }
                Task::Marts { full_refresh } => {
                    let options = tributary_etl::BuildOptions {
                        full_refresh,
                        ..Default::default()
                    };
                    let report = tributary_etl::build_marts_with(&lake, &options)
                        .await
                        .map_err(|e| tributary_model::error_chain(&e))?;
                    Ok(report.to_string().lines().next().unwrap_or("").to_string())
                }
                Task::DataTests => {
                    let report = tributary_etl::test_marts(&lake)
                        .await
                        .map_err(|e| tributary_model::error_chain(&e))?;
                    if report.ok() {
                        Ok("data tests passed".into())
                    } else {
                        Err(format!("data tests failed: {report}"))
                    }
                }
                Task::RiskProfile => {
                    tributary_etl::profile::build_risk_profile(&lake, &Default::default())
                        .await
                        .map(|r| r.to_string())
                        .map_err(|e| tributary_model::error_chain(&e))
                }
                Task::Optimize { layer } => {
                    let m = &platform.config().ingest.maintenance;
                    let options = tributary_lake::maintenance::OptimizeOptions {
                        target_size: m.target_file_size,
                        max_attempts: m.max_attempts,
                        ..Default::default()
                    };
                    let layers: Vec<String> = match layer {
                        Some(l) => vec![l],
                        None => ["bronze", "silver", "gold"].map(String::from).to_vec(),
                    };
                    let mut n = 0;
                    for l in layers {
                        for t in lake.list_tables(&l).await.map_err(err)? {
                            tributary_lake::maintenance::optimize(&lake, &l, &t, &options)
                                .await
                                .map_err(|e| {
                                    format!("{l}.{t}: {}", tributary_model::error_chain(&e))
                                })?;
                            n += 1;
                        }
                    }
                    Ok(format!("optimized {n} tables"))
                }
                Task::Verify => {
                    let sources = platform.sources().map_err(err)?;
                    let session = tributary_query::Session::new(lake).await.map_err(err)?;
                    let results = checks::compare_silver(sources, &session)
                        .await
                        .map_err(|e| tributary_model::error_chain(&e))?;
                    let differ: Vec<&str> = results
                        .iter()
                        .filter(|c| !c.equal())
                        .map(|c| c.table.as_str())
                        .collect();
                    if differ.is_empty() {
                        Ok(format!("{} tables equal to their sources", results.len()))
                    } else {
                        Err(format!(
                            "silver differs from the source in {}",
                            differ.join(", ")
                        ))
                    }
                }
                Task::Sql {
                    statement,
                    into,
                    partition_column,
                } => sql_into_gold(&lake, &ctx, &statement, &into, partition_column.as_deref())
                    .await
                    .map_err(chain),
                Task::Shell { .. } => unreachable!("handled above"),
            }
        })
    }
}

/// The result of `statement` into `gold.<into>`: the whole table, or with
/// a partition column the rows of the run's date only (replaced, so a
/// rerun or a backfill gives the same table).
async fn sql_into_gold(
    lake: &tributary_lake::Lake,
    ctx: &RunContext,
    statement: &str,
    into: &str,
    partition_column: Option<&str>,
) -> Result<String> {
    use deltalake::operations::write::SchemaMode;
    use deltalake::protocol::SaveMode;
    let session = tributary_query::Session::new(lake.clone()).await?;
    let batches = session.sql(&ctx.render(statement)).await?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let Some(first) = batches.first() else {
        bail!("the statement returned no batch");
    };
    let schema = first.schema();
    let table = match lake.open("gold", into).await? {
        Some(t) => t,
        None => lake.table_handle("gold", into).await?,
    };
    let mut write = table
        .write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_table_name(into)
        .with_commit_properties(lake.commit_properties());
    match partition_column {
        Some(c) => {
            anyhow::ensure!(
                schema.field_with_name(c).is_ok(),
                "the statement has no column {c:?} to write the date's rows by"
            );
            let days = ctx
                .logical_date
                .unwrap_or_else(|| ctx.logical_time.date_naive())
                .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch"))
                .num_days() as i32;
            let predicate = datafusion::prelude::col(c).eq(datafusion::prelude::lit(
                datafusion::scalar::ScalarValue::Date32(Some(days)),
            ));
            write = write.with_replace_where(predicate);
        }
        None => write = write.with_schema_mode(SchemaMode::Overwrite),
    }
    let t = write
        .await
        .with_context(|| format!("writing gold.{into}"))?;
    Ok(format!(
        "{rows} rows into gold.{into}{} (version {})",
        partition_column.map_or(String::new(), |c| format!(" where {c} = {}", ctx.ds())),
        t.version().unwrap_or(0)
    ))
}
