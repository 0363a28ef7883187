//! `tributary workflows …`: the scheduler, its DAG and its history, and
//! the runner of tributary's own tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{NaiveDate, TimeZone, Utc};
use tributary::{parse_duration, shutdown_on_signals};
use tributary_stack::{Config, Platform, checks};
use tributary_workflows::history::{History, NewRun, trigger};
use tributary_workflows::runner::{self, RunContext, Runner, TaskFuture};
use tributary_workflows::scheduler::{Options, Scheduler, SystemClock};
use tributary_workflows::{Dag, Job, Task};

use crate::args::WorkflowsCommand;

fn history_dsn(platform: &Platform) -> Result<String> {
    platform
        .lake_config()
        .coordinator_dsn
        .clone()
        .ok_or_else(|| {
            anyhow!(
                "no catalog database: configure [sources] or start the local stack (tributary up)"
            )
        })
}

fn load(jobs: &Path) -> Result<Dag> {
    Dag::load(jobs).with_context(|| format!("loading the jobs of {}", jobs.display()))
}

pub async fn run(config: Config, jobs: PathBuf, command: WorkflowsCommand) -> Result<()> {
    match command {
        WorkflowsCommand::Run { metrics, tick } => {
            let platform = Platform::load(config)?;
            let dsn = history_dsn(&platform)?;
            let shutdown = shutdown_on_signals();
            super::serve_metrics(metrics, &shutdown).await?;
            let owner = format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into()),
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            );
            let runner = Arc::new(TributaryRunner { platform });
            let scheduler = Scheduler::new(
                Options {
                    jobs_dir: jobs,
                    tick: parse_duration(&tick)?,
                },
                &dsn,
                owner,
                runner,
                Arc::new(SystemClock),
            )
            .await?;
            scheduler.run(shutdown).await?;
        }
        WorkflowsCommand::List => {
            let dag = load(&jobs)?;
            println!(
                "{:<20} {:<13} {:<22} {:<8} {:<7} description",
                "job", "task", "when", "retries", "policy"
            );
            for name in dag.order() {
                let j = &dag.jobs[&name];
                let when = match &j.schedule {
                    Some(s) => format!("{} {}", s.expr, s.tz.name()),
                    None if j.depends_on.is_empty() => "on demand".into(),
                    None => format!("after {}", j.depends_on.join(",")),
                };
                println!(
                    "{:<20} {:<13} {:<22} {:<8} {:<7} {}",
                    j.name,
                    j.task.kind(),
                    when,
                    j.retry.attempts - 1,
                    format!("{:?}", j.concurrency).to_lowercase(),
                    j.description
                );
            }
            for e in &dag.errors {
                println!("REFUSED {e}");
            }
            if !dag.errors.is_empty() {
                bail!("{} job file(s) refused", dag.errors.len());
            }
        }
        WorkflowsCommand::Graph { dot } => {
            let dag = load(&jobs)?;
            if dot {
                print!("{}", dag.dot());
            } else {
                print!("{}", dag.render());
            }
        }
        WorkflowsCommand::Status => {
            let platform = Platform::load(config)?;
            let dsn = history_dsn(&platform)?;
            let lake = platform.lake()?;
            match lake.coordinator().await? {
                Some(c) => {
                    let leases = c.leases(tributary_workflows::leader::RESOURCE).await?;
                    match leases.iter().find(|l| l.expires_in_s > 0.0) {
                        Some(l) => println!(
                            "leader: {} (epoch {}, lease {:.1}s left)",
                            l.owner, l.epoch, l.expires_in_s
                        ),
                        None => println!("leader: none (no scheduler holds the lease)"),
                    }
                }
                None => println!("leader: unknown (no coordinator)"),
            }
            let history = History::connect(&dsn).await?;
            print_runs(&history, None, 15, false).await?;
        }
        WorkflowsCommand::Trigger { job, date } => {
            let dag = load(&jobs)?;
            let j = dag
                .jobs
                .get(&job)
                .ok_or_else(|| anyhow!("no job {job:?} in {}", jobs.display()))?;
            let platform = Platform::load(config)?;
            let history = History::connect(&history_dsn(&platform)?).await?;
            let run = manual_run(
                j,
                date.as_deref().map(parse_date).transpose()?,
                trigger::MANUAL,
                "manual",
                0,
            )?;
            history.enqueue(&run).await?;
            println!("queued {} (a running scheduler starts it)", run.run_key);
        }
        WorkflowsCommand::Backfill { job, from, to } => {
            let dag = load(&jobs)?;
            let j = dag
                .jobs
                .get(&job)
                .ok_or_else(|| anyhow!("no job {job:?} in {}", jobs.display()))?;
            let (from, to) = (parse_date(&from)?, parse_date(&to)?);
            if to < from {
                bail!("--to {to} is before --from {from}");
            }
            let platform = Platform::load(config)?;
            let history = History::connect(&history_dsn(&platform)?).await?;
            let batch = format!(
                "backfill-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            );
            let mut ids = Vec::new();
            let mut d = from;
            let mut order = 0;
            while d <= to {
                let run = manual_run(j, Some(d), trigger::BACKFILL, &batch, order)?;
                order += 1;
                if let Some(id) = history.enqueue(&run).await? {
                    ids.push((id, run.run_key));
                }
                d = d.succ_opt().expect("a date after");
            }
            println!(
                "queued {} runs of {job} ({batch}); the scheduler runs them in date order",
                ids.len()
            );
            follow(&history, &ids).await?;
        }
        WorkflowsCommand::History { job, limit } => {
            let platform = Platform::load(config)?;
            let history = History::connect(&history_dsn(&platform)?).await?;
            print_runs(&history, job.as_deref(), limit, true).await?;
        }
    }
    Ok(())
}

fn parse_date(s: &str) -> Result<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| anyhow!("date {s:?}: {e} (expected YYYY-MM-DD)"))
}

/// A run asked for by hand: for `date` (midnight on the job's clock), or now.
fn manual_run(
    job: &Job,
    date: Option<NaiveDate>,
    why: &'static str,
    tag: &str,
    order: i64,
) -> Result<NewRun> {
    let now = Utc::now();
    let logical_time = match date {
        Some(d) => {
            let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
            match &job.schedule {
                Some(s) => {
                    s.tz.from_local_datetime(&midnight)
                        .earliest()
                        .map(|t| t.with_timezone(&Utc))
                        .ok_or_else(|| anyhow!("{d} has no midnight in {}", s.tz.name()))?
                }
                None => Utc.from_utc_datetime(&midnight),
            }
        }
        None => now,
    };
    let tag = if tag == "manual" {
        format!("manual-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
    } else {
        tag.to_string()
    };
    Ok(NewRun {
        run_key: format!(
            "{}#{tag}",
            tributary_workflows::scheduler::run_key(&job.name, logical_time)
        ),
        job: job.name.clone(),
        logical_time,
        logical_date: date.or_else(|| job.partitioned.then(|| logical_time.date_naive())),
        trigger: why,
        // Backfills in date order: the scheduler starts waiting runs oldest first.
        due_at: now + chrono::Duration::milliseconds(order),
    })
}

/// Prints runs as they end until every one of `ids` has.
async fn follow(history: &History, ids: &[(i64, String)]) -> Result<()> {
    let mut open: Vec<(i64, String)> = ids.to_vec();
    let mut failed = 0;
    while !open.is_empty() {
        let mut still = Vec::new();
        for (id, key) in open {
            match history.run(id).await? {
                Some(r)
                    if ["succeeded", "failed", "cancelled", "skipped"]
                        .contains(&r.state.as_str()) =>
                {
                    if r.state != "succeeded" {
                        failed += 1;
                    }
                    println!(
                        "{key:<50} {:<10} attempts {} {}",
                        r.state,
                        r.attempts,
                        r.error.or(r.summary).unwrap_or_default()
                    );
                }
                _ => still.push((id, key)),
            }
        }
        open = still;
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if failed > 0 {
        bail!("{failed} run(s) did not succeed");
    }
    Ok(())
}

async fn print_runs(
    history: &History,
    job: Option<&str>,
    limit: i64,
    attempts: bool,
) -> Result<()> {
    let runs = history.recent(job, limit).await?;
    println!(
        "{:<46} {:<9} {:<10} {:>3} {:<20} {:>8}  detail",
        "run", "trigger", "state", "try", "started (UTC)", "seconds"
    );
    for r in runs {
        let secs = match (r.started_at, r.ended_at) {
            (Some(s), Some(e)) => format!("{:.1}", (e - s).num_milliseconds() as f64 / 1000.0),
            _ => "-".into(),
        };
        println!(
            "{:<46} {:<9} {:<10} {:>3} {:<20} {:>8}  {}",
            r.run_key,
            r.trigger,
            r.state,
            r.attempts,
            r.started_at
                .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            secs,
            r.error.as_deref().or(r.summary.as_deref()).unwrap_or("")
        );
        if attempts && r.attempts > 1 {
            for a in history.attempts(r.id).await? {
                println!(
                    "    attempt {} {:<10} {} by {} (epoch {}) {}",
                    a.attempt,
                    a.state,
                    a.started_at.format("%H:%M:%S"),
                    a.scheduler,
                    a.epoch,
                    a.error.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Runs tributary's tasks in this process, on the platform's lake and
/// sources.
struct TributaryRunner {
    platform: Platform,
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
        if let Task::Shell { command } = &task {
            return runner::shell(command, &ctx);
        }
        Box::pin(async move {
            let lake = platform.lake().map_err(err)?;
            match task {
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
