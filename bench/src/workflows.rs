//! The workflows scheduler on a stack of its own (its catalog database is
//! the real history and lease store):
//!
//! 1. **Schedule delay**: a day of minute schedules compressed by a fake
//!    clock, run by the scheduler as shipped (it wakes at each fire time)
//!    and, side by side, by the same scheduler polling on its tick alone
//!    (the reference: how a polling scheduler behaves). The delay is from a
//!    run's due time to its start, in wall-clock seconds (the fake clock's
//!    delay divided by its speed). Tasks are in-process no-ops, so what is
//!    measured is the scheduler and its history writes. Every fire time of
//!    the day must have exactly one run.
//! 2. **Takeover**: two `tributary workflows run` processes and many
//!    short shell jobs every second; the leader is SIGKILLed several times
//!    (and restarted as a standby at once). Measured: kill to the next
//!    leader's lease, kill to its first started attempt; checked: no run
//!    succeeded twice, no fire time without a run, nothing left unfinished.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use tokio_util::sync::CancellationToken;
use tributary_stack::{Config, Platform};
use tributary_workflows::runner::{RunContext, Runner, TaskFuture};
use tributary_workflows::scheduler::{Clock, FakeClock, Options as SchedulerOptions, Scheduler};

use crate::children::{Children, on_own_stack};
use tributary_stack::postgres::connect;

use crate::{Error, Result, io, percentile, pg};

pub struct Options {
    /// The `tributary` binary (the takeover part runs it as children).
    pub exe: PathBuf,
    /// Jobs on a minute schedule in the delay part.
    pub jobs: usize,
    /// How much faster than the wall clock the fake clock runs.
    pub speed: f64,
    /// Hours of schedule in the delay part.
    pub hours: f64,
    /// The scheduler's tick (its polling period).
    pub tick: Duration,
    /// Shell jobs every second in the takeover part.
    pub short_jobs: usize,
    /// SIGKILLs of the leader in the takeover part (0: skip it).
    pub kills: usize,
    pub keep: bool,
}

impl Options {
    pub fn new(exe: PathBuf) -> Options {
        Options {
            exe,
            jobs: 4,
            speed: 720.0,
            hours: 24.0,
            tick: Duration::from_secs(1),
            short_jobs: 20,
            kills: 3,
            keep: false,
        }
    }
}

/// Delay percentiles of one scheduler mode, wall-clock seconds.
#[derive(Debug)]
pub struct Delay {
    pub mode: &'static str,
    pub runs: usize,
    pub missing: usize,
    pub doubled: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug)]
pub struct Takeover {
    pub kill: usize,
    /// Kill to the new leader's lease.
    pub lease_s: f64,
    /// Kill to the first attempt the new leader started.
    pub first_start_s: f64,
}

#[derive(Debug)]
pub struct Report {
    pub jobs: usize,
    pub speed: f64,
    pub hours: f64,
    pub tick: Duration,
    pub delays: Vec<Delay>,
    pub short_jobs: usize,
    pub takeovers: Vec<Takeover>,
    pub runs: i64,
    pub doubled: i64,
    pub missing: i64,
    pub unfinished: i64,
}

impl Report {
    /// Whether every run happened once and the goals held.
    pub fn ok(&self) -> bool {
        self.delays.iter().all(|d| d.missing == 0 && d.doubled == 0)
            && self.doubled == 0
            && self.missing == 0
            && self.unfinished == 0
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "schedule delay (due -> start, wall-clock seconds): {} jobs on `* * * * *`, {} h of schedule at {}x, tick {:?}, no-op tasks",
            self.jobs, self.hours, self.speed, self.tick
        )?;
        writeln!(
            f,
            "  {:<28} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9}",
            "scheduler", "runs", "missing", "doubled", "p50", "p99", "max"
        )?;
        for d in &self.delays {
            writeln!(
                f,
                "  {:<28} {:>6} {:>8} {:>8} {:>8.3}s {:>8.3}s {:>8.3}s",
                d.mode, d.runs, d.missing, d.doubled, d.p50, d.p99, d.max
            )?;
        }
        if let [ours, reference] = &self.delays[..] {
            writeln!(
                f,
                "  p99 ratio (tributary / polling reference): {:.3}x; goal p99 < 1 s: {}",
                ours.p99 / reference.p99.max(1e-9),
                if ours.p99 < 1.0 { "met" } else { "NOT met" }
            )?;
        }
        if self.takeovers.is_empty() {
            return Ok(());
        }
        writeln!(
            f,
            "takeover: 2 scheduler processes, {} shell jobs every second, the leader SIGKILLed {} times",
            self.short_jobs,
            self.takeovers.len()
        )?;
        for t in &self.takeovers {
            writeln!(
                f,
                "  kill {}: new lease after {:.2} s, first attempt after {:.2} s",
                t.kill, t.lease_s, t.first_start_s
            )?;
        }
        let worst = self.takeovers.iter().map(|t| t.lease_s).fold(0.0, f64::max);
        writeln!(
            f,
            "  worst takeover {worst:.2} s (goal within 10 s: {}); runs {}, run twice {}, fire times without a run {}, unfinished {}",
            if worst <= 10.0 { "met" } else { "NOT met" },
            self.runs,
            self.doubled,
            self.missing,
            self.unfinished
        )
    }
}

pub async fn run(config: &Config, options: &Options) -> Result<Report> {
    if options.jobs == 0 || options.speed <= 0.0 || options.hours <= 0.0 {
        return Err(Error::Options(
            "--jobs, --speed and --hours must be positive".into(),
        ));
    }
    on_own_stack(config, "workflows", options.keep, |cfg, dir| async move {
        let platform = Platform::start(cfg).await?;
        let dsn = platform
            .lake_config()
            .coordinator_dsn
            .clone()
            .ok_or_else(|| Error::Internal("the bench stack has no catalog database".into()))?;
        let mut delays = Vec::new();
        for (mode, poll_only) in [
            ("tributary (wakes at fires)", false),
            ("polling reference", true),
        ] {
            eprintln!(
                "delay: {mode}, {} h of schedule in {:.0} s",
                options.hours,
                options.hours * 3600.0 / options.speed
            );
            delays.push(delay(&dsn, &dir, options, mode, poll_only).await?);
        }
        let mut report = Report {
            jobs: options.jobs,
            speed: options.speed,
            hours: options.hours,
            tick: options.tick,
            delays,
            short_jobs: options.short_jobs,
            takeovers: Vec::new(),
            runs: 0,
            doubled: 0,
            missing: 0,
            unfinished: 0,
        };
        if options.kills > 0 {
            takeover(&platform, &dsn, &dir, options, &mut report).await?;
        }
        Ok(report)
    })
    .await
}

fn wf(e: tributary_workflows::Error) -> Error {
    Error::Run(format!("scheduler: {}", tributary_model::error_chain(&e)))
}

/// Tasks that end at once: the delay part measures the scheduler.
struct NoOp;

impl Runner for NoOp {
    fn run(&self, _: &tributary_workflows::Job, _: RunContext) -> TaskFuture {
        Box::pin(async { Ok("no-op".to_string()) })
    }
}

fn write_jobs(dir: &Path, n: usize, text: &str, prefix: &str) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    for i in 0..n {
        let path = dir.join(format!("{prefix}{i:02}.toml"));
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
    }
    Ok(())
}

async fn delay(
    dsn: &str,
    dir: &Path,
    options: &Options,
    mode: &'static str,
    poll_only: bool,
) -> Result<Delay> {
    let prefix = if poll_only { "poll" } else { "wake" };
    let jobs = dir.join(format!("{prefix}-jobs"));
    write_jobs(
        &jobs,
        options.jobs,
        "schedule = \"* * * * *\"\ncatchup = \"all\"\nconcurrency = \"queue\"\n[task]\nkind = \"shell\"\ncommand = \"true\"\n",
        &format!("{prefix}_"),
    )?;
    // The fake day starts a second before midnight: the first sight of a
    // job sets its cursor to "now", so the day's first fire is owed.
    let origin = Utc
        .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
        .single()
        .expect("valid")
        - chrono::Duration::seconds(1);
    let clock = Arc::new(FakeClock::new(origin, options.speed));
    let scheduler = Scheduler::new(
        SchedulerOptions {
            jobs_dir: jobs,
            tick: options.tick,
            poll_only,
        },
        dsn,
        format!("bench-{prefix}"),
        Arc::new(NoOp),
        clock.clone(),
    )
    .await
    .map_err(wf)?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(scheduler.run(shutdown.clone()));
    // The clock stands still until the scheduler leads and has seen every
    // job (its first sight of a job is the job's start), so the day's
    // first fire is owed and no startup wait counts as delay.
    let c = connect(dsn).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: i64 = c
            .query_one(
                "SELECT count(*) FROM tributary_workflows.cursors WHERE job LIKE $1",
                &[&format!("{prefix}\\_%")],
            )
            .await
            .map_err(pg("reading cursors"))?
            .get(0);
        if seen as usize == options.jobs {
            break;
        }
        if Instant::now() > deadline || task.is_finished() {
            return Err(Error::Run(format!(
                "the {mode} scheduler did not lead within 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    clock.start();
    let span = chrono::Duration::milliseconds((options.hours * 3_600_000.0) as i64);
    let end = origin + span;
    let started = Instant::now();
    let mut last_report = Instant::now();
    while clock.now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if last_report.elapsed() > Duration::from_secs(15) {
            eprintln!(
                "  {mode}: fake time {} ({:.0} s)",
                clock.now().format("%H:%M"),
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if task.is_finished() {
            break;
        }
    }
    // The day's last fire is owed at `end`: a polling scheduler sees it
    // at its next tick.
    tokio::time::sleep(options.tick * 2 + Duration::from_secs(1)).await;
    shutdown.cancel();
    task.await
        .map_err(|e| Error::Internal(format!("the scheduler task: {e}")))?
        .map_err(wf)?;
    let rows = c
        .query(
            "SELECT job, logical_time, due_at, started_at FROM tributary_workflows.runs
              WHERE job LIKE $1 AND logical_time > $2 AND logical_time <= $3 ORDER BY job, logical_time",
            &[&format!("{prefix}\\_%"), &origin, &end],
        )
        .await
        .map_err(pg("reading the runs"))?;
    let mut delays = Vec::new();
    let mut per_job: BTreeMap<String, Vec<DateTime<Utc>>> = BTreeMap::new();
    for r in &rows {
        let due: DateTime<Utc> = r.get(2);
        if let Some(start) = r.get::<_, Option<DateTime<Utc>>>(3) {
            delays.push(clock.seconds(start - due).max(0.0));
        }
        per_job.entry(r.get(0)).or_default().push(r.get(1));
    }
    let expected = (span.num_minutes()) as usize;
    let mut missing = 0;
    let mut doubled = 0;
    for i in 0..options.jobs {
        let times = per_job
            .remove(&format!("{prefix}_{i:02}"))
            .unwrap_or_default();
        let distinct: std::collections::BTreeSet<_> = times.iter().collect();
        doubled += times.len() - distinct.len();
        missing += expected.saturating_sub(distinct.len());
    }
    delays.sort_by(f64::total_cmp);
    Ok(Delay {
        mode,
        runs: rows.len(),
        missing,
        doubled,
        p50: percentile(&delays, 0.5),
        p99: percentile(&delays, 0.99),
        max: delays.last().copied().unwrap_or(0.0),
    })
}

async fn lease(c: &tokio_postgres::Client) -> Result<Option<(String, i64)>> {
    let row = c
        .query_opt(
            "SELECT owner, epoch FROM tributary_lake.leases
              WHERE resource = 'workflows/scheduler' AND expires_at > now()",
            &[],
        )
        .await
        .map_err(pg("reading the scheduler lease"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

async fn takeover(
    platform: &Platform,
    dsn: &str,
    dir: &Path,
    options: &Options,
    report: &mut Report,
) -> Result<()> {
    let jobs = dir.join("short-jobs");
    write_jobs(
        &jobs,
        options.short_jobs,
        "schedule = \"* * * * * *\"\ncatchup = \"all\"\nconcurrency = \"queue\"\ntimeout = \"30s\"\n[task]\nkind = \"shell\"\ncommand = \"sleep 0.1\"\n[retry]\nattempts = 3\nbackoff = \"1s\"\n",
        "short_",
    )?;
    let state = platform.config().state_dir.clone();
    let mut children = Children::new(
        options.exe.clone(),
        vec![
            (
                "TRIBUTARY__STATE_DIR".to_string(),
                state.display().to_string(),
            ),
            ("TRIBUTARY_LOG".to_string(), "info".to_string()),
        ],
        state,
    );
    let jobs_arg = jobs.display().to_string();
    let args = ["workflows", "--jobs", &jobs_arg, "run"];
    children.spawn("scheduler-a", &args)?;
    children.spawn("scheduler-b", &args)?;
    let c = connect(dsn).await?;
    let first = wait_lease(&c, &mut children, None, Duration::from_secs(60)).await?;
    // The jobs start when the leader first sees them, within a tick.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let began: DateTime<Utc> = Utc::now();
    let mut leader = first;
    for kill in 1..=options.kills {
        tokio::time::sleep(Duration::from_secs(8)).await;
        children.check()?;
        let name = which(&children, &leader.0)?;
        eprintln!("takeover: SIGKILL {name} (the leader, epoch {})", leader.1);
        let at = Instant::now();
        let at_wall = Utc::now();
        children.kill_and_restart(name)?;
        let next = wait_lease(&c, &mut children, Some(leader.1), Duration::from_secs(30)).await?;
        let lease_s = at.elapsed().as_secs_f64();
        let first_start: Option<DateTime<Utc>> = loop {
            let row = c
                .query_one(
                    "SELECT min(started_at) FROM tributary_workflows.attempts WHERE epoch = $1",
                    &[&next.1],
                )
                .await
                .map_err(pg("reading attempts"))?;
            if let Some(t) = row.get::<_, Option<DateTime<Utc>>>(0) {
                break Some(t);
            }
            if at.elapsed() > Duration::from_secs(30) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        report.takeovers.push(Takeover {
            kill,
            lease_s,
            first_start_s: first_start
                .map(|t| (t - at_wall).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(f64::NAN),
        });
        leader = next;
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let ended: DateTime<Utc> = Utc::now();
    // Let what runs end, then stop both (graceful: attempts cut short are
    // recorded for a next leader, which here never comes; they count as
    // unfinished only if they were not cut by this stop).
    tokio::time::sleep(Duration::from_secs(3)).await;
    children.stop();
    let count = |sql: &'static str| {
        let c = &c;
        async move {
            c.query_one(sql, &[&began, &ended])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(pg("counting runs"))
        }
    };
    report.runs = count(
        "SELECT count(*) FROM tributary_workflows.runs WHERE job LIKE 'short\\_%' AND logical_time BETWEEN $1 AND $2",
    )
    .await?;
    report.doubled = count(
        "SELECT count(*) FROM (SELECT a.run_id FROM tributary_workflows.attempts a
           JOIN tributary_workflows.runs r ON r.id = a.run_id
          WHERE r.job LIKE 'short\\_%' AND r.logical_time BETWEEN $1 AND $2 AND a.state = 'succeeded'
          GROUP BY a.run_id HAVING count(*) > 1) d",
    )
    .await?;
    report.unfinished = count(
        "SELECT count(*) FROM tributary_workflows.runs
          WHERE job LIKE 'short\\_%' AND logical_time BETWEEN $1 AND $2 AND state <> 'succeeded'",
    )
    .await?;
    // Every second of [began, ended] for every job has its run.
    let expected = options.short_jobs as i64 * ((ended - began).num_seconds());
    let present = count(
        "SELECT count(*) FROM tributary_workflows.runs
          WHERE job LIKE 'short\\_%' AND logical_time > $1 AND logical_time <= $2",
    )
    .await?;
    report.missing = (expected - present).max(0);
    Ok(())
}

/// The child whose pid is in a lease owner (`<host>-<pid>-<id>`).
fn which(children: &Children, owner: &str) -> Result<&'static str> {
    let pid: Option<u32> = owner.rsplit('-').nth(1).and_then(|p| p.parse().ok());
    children
        .pids()
        .find(|(_, p)| Some(*p) == pid)
        .map(|(n, _)| n)
        .ok_or_else(|| {
            Error::Run(format!(
                "the lease owner {owner} is not one of the bench's schedulers"
            ))
        })
}

/// Waits for a live lease with an epoch above `above`.
async fn wait_lease(
    c: &tokio_postgres::Client,
    children: &mut Children,
    above: Option<i64>,
    timeout: Duration,
) -> Result<(String, i64)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(l) = lease(c).await?
            && above.is_none_or(|a| l.1 > a)
        {
            return Ok(l);
        }
        children.check()?;
        if Instant::now() > deadline {
            return Err(Error::Run(format!(
                "no scheduler took the lead within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
