//! `tributary workflows …`: the scheduler, its DAG and its history, and
//! the runner of tributary's own tasks.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use chrono::{NaiveDate, Utc};
use tributary::tasks::TributaryRunner;
use tributary::{parse_duration, shutdown_on_signals};
use tributary_stack::{Config, Platform};
use tributary_workflows::Dag;
use tributary_workflows::history::{History, NewRun, trigger};
use tributary_workflows::scheduler::{Options, Scheduler, SystemClock};
use tributary_workflows::timeline;

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
            let _announced =
                super::serve_metrics(platform.config(), "workflows", metrics, &shutdown).await?;
            let owner = format!(
                "{}-{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "scheduler".into()),
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..6]
            );
            let runner = Arc::new(TributaryRunner::new(platform));
            let scheduler = Scheduler::new(
                Options {
                    jobs_dir: jobs,
                    tick: parse_duration(&tick)?,
                    poll_only: false,
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
                let when = j.when();
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
            let run = NewRun::manual(
                j,
                date.as_deref().map(parse_date).transpose()?,
                trigger::MANUAL,
                "manual",
                0,
                None,
            )?;
            history.enqueue(&run).await?;
            println!("queued {} (a running scheduler starts it)", run.run_key);
        }
        WorkflowsCommand::Backfill {
            job,
            from,
            to,
            parallel,
        } => {
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
                let run = NewRun::manual(
                    j,
                    Some(d),
                    trigger::BACKFILL,
                    &batch,
                    order,
                    Some(parallel as i32),
                )?;
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
        WorkflowsCommand::Timeline { job, limit, svg } => {
            let platform = Platform::load(config)?;
            let history = History::connect(&history_dsn(&platform)?).await?;
            let mut runs = history.recent(job.as_deref(), limit).await?;
            runs.reverse();
            let now = Utc::now();
            let mut rows = Vec::new();
            for r in &runs {
                let attempts = history.attempts(r.id).await?;
                rows.push((r.run_key.clone(), timeline::segments(r, &attempts, now)));
            }
            let Some(chart) = timeline::Chart::new(rows) else {
                println!("no runs yet");
                return Ok(());
            };
            print!("{}", chart.text(72));
            if let Some(path) = svg {
                std::fs::write(&path, chart.svg())
                    .with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
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
