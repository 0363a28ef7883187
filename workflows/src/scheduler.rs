//! The scheduler: one loop per process; the process holding the lease
//! ([`crate::leader`]) creates due runs, starts them and records them; the
//! others wait to take over.
//!
//! Each tick the leader:
//! 1. re-reads the job folder (a refused file is logged once; the other
//!    jobs keep their schedule, and a job whose file turns bad keeps its
//!    last good definition);
//! 2. per scheduled job, creates the runs of the fire times since its
//!    cursor ([`plan`]: catch-up `all`, `latest` or `none` for the times
//!    missed while no scheduler ran), moving the cursor in the same
//!    transaction;
//! 3. starts waiting runs, oldest first, under the job's concurrency
//!    policy; each attempt runs with its timeout, and its end is recorded
//!    with the retry decision ([`crate::runner::conclude`]);
//! 4. after a success, creates the downstream runs whose upstreams have
//!    all succeeded for the same logical time.
//!
//! On taking the lead it recovers the runs its predecessor left running:
//! their attempt is recorded as `lost` and the run is retried at once (at
//! most [`MAX_LOST`] times), so a run is never lost with a scheduler.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::dag::Dag;
use crate::history::{Finish, History, NewRun, Run, state, trigger};
use crate::job::{Catchup, Concurrency, Job, Schedule};
use crate::leader::{Change, Leadership, RENEW};
use crate::runner::{Outcome, RunContext, Runner, attempt, conclude};
use crate::{Error, Result};

/// A fire time older than this when first seen was missed (no scheduler
/// ran at the time), and the catch-up policy decides about it.
pub const GRACE: Duration = Duration::from_secs(30);
/// Lost attempts after which a run fails instead of being retried again.
pub const MAX_LOST: i32 = 3;
/// At most this many fire times are considered per job and tick.
const MAX_FIRES: usize = 10_000;

/// The time the scheduler schedules by.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// How long `d` of this clock's time lasts on the wall clock (what the
    /// scheduler sleeps until its next fire time).
    fn real(&self, d: chrono::Duration) -> Duration {
        d.to_std().unwrap_or_default()
    }
}

/// A clock that stands at `origin` until [`FakeClock::start`], then runs
/// `speed` times faster than the wall clock: a day of schedules in
/// minutes, for tests and benchmarks.
pub struct FakeClock {
    origin: DateTime<Utc>,
    started: std::sync::OnceLock<std::time::Instant>,
    speed: f64,
}

impl FakeClock {
    pub fn new(origin: DateTime<Utc>, speed: f64) -> FakeClock {
        FakeClock {
            origin,
            started: std::sync::OnceLock::new(),
            speed,
        }
    }

    /// Sets the clock going (once).
    pub fn start(&self) {
        let _ = self.started.set(std::time::Instant::now());
    }

    /// Wall-clock seconds for `d` of this clock's time.
    pub fn seconds(&self, d: chrono::Duration) -> f64 {
        d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6 / self.speed
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        let Some(started) = self.started.get() else {
            return self.origin;
        };
        let fake = started.elapsed().mul_f64(self.speed);
        self.origin + chrono::Duration::from_std(fake).unwrap_or_default()
    }

    fn real(&self, d: chrono::Duration) -> Duration {
        d.to_std().unwrap_or_default().div_f64(self.speed)
    }
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// The run key of a scheduled or upstream-triggered run.
pub fn run_key(job: &str, logical_time: DateTime<Utc>) -> String {
    format!("{job}@{}", logical_time.format("%Y-%m-%dT%H:%M:%SZ"))
}

/// Fire times to create runs for, each with its trigger.
pub type Fires = Vec<(DateTime<Utc>, &'static str)>;

/// The runs to create for `schedule` between its cursor and `now`, with
/// their trigger, and the new cursor; `None` when nothing fell due.
pub fn plan(
    schedule: &Schedule,
    catchup: Catchup,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<(Fires, DateTime<Utc>)> {
    let fires = schedule.fires_between(cursor, now, MAX_FIRES);
    let newest = *fires.last()?;
    let grace = chrono::Duration::from_std(GRACE).expect("small");
    let kind = |t: DateTime<Utc>| {
        if t < now - grace {
            trigger::CATCHUP
        } else {
            trigger::SCHEDULE
        }
    };
    let chosen: Vec<DateTime<Utc>> = match catchup {
        Catchup::All => fires,
        Catchup::Latest => vec![newest],
        Catchup::None => fires.into_iter().filter(|t| *t >= now - grace).collect(),
    };
    Some((chosen.into_iter().map(|t| (t, kind(t))).collect(), newest))
}

/// The settings of a scheduler process.
pub struct Options {
    pub jobs_dir: PathBuf,
    /// How often the loop wakes at least; it also wakes at each fire time
    /// (unless `poll_only`) and right after an attempt ends.
    pub tick: Duration,
    /// Wake on the tick alone, as a polling scheduler does (the reference
    /// of `tributary bench workflows`).
    pub poll_only: bool,
}

struct Running {
    job: String,
    batch: Option<String>,
    attempt: i32,
    cancel: CancellationToken,
    started: std::time::Instant,
}

struct Done {
    run_id: i64,
    attempt: i32,
    outcome: Outcome,
}

pub struct Scheduler {
    options: Options,
    history: History,
    leadership: Leadership,
    runner: Arc<dyn Runner>,
    clock: Arc<dyn Clock>,
    dag: Dag,
    reported: BTreeSet<String>,
    running: HashMap<i64, Running>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
}

impl Scheduler {
    pub async fn new(
        options: Options,
        dsn: &str,
        owner: String,
        runner: Arc<dyn Runner>,
        clock: Arc<dyn Clock>,
    ) -> Result<Scheduler> {
        let history = History::connect(dsn).await?;
        let leadership = Leadership::connect(dsn, owner).await?;
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Ok(Scheduler {
            options,
            history,
            leadership,
            runner,
            clock,
            dag: Dag::default(),
            reported: BTreeSet::new(),
            running: HashMap::new(),
            done_tx,
            done_rx,
        })
    }

    /// Runs until `shutdown`; then cancels what runs, records it for the
    /// next leader and gives the lease up.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<()> {
        tracing::info!(owner = self.leadership.owner(), jobs = %self.options.jobs_dir.display(), "scheduler started");
        let mut renew = tokio::time::interval(RENEW);
        let wake = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = self.done_rx.recv() => {
                    let r = self.finished(done).await;
                    self.on_error(r);
                    // What the end unblocks (a downstream run, a queued
                    // one) starts now, not at the next tick.
                    let soon = tokio::time::Instant::now() + Duration::from_millis(5);
                    if wake.deadline() > soon {
                        wake.as_mut().reset(soon);
                    }
                }
                _ = renew.tick() => {
                    let r = self.lead().await;
                    self.on_error(r);
                }
                _ = &mut wake => {
                    if self.leadership.fence().is_some() {
                        let r = self.round().await;
                        self.on_error(r);
                    }
                    wake.as_mut().reset(tokio::time::Instant::now() + self.next_wake());
                }
            }
        }
        self.stop().await;
        Ok(())
    }

    /// Until the next fire time of any scheduled job (just after it), or
    /// the tick when that is sooner.
    fn next_wake(&self) -> Duration {
        let now = self.clock.now();
        let next = self
            .dag
            .jobs
            .values()
            .filter_map(|j| j.schedule.as_ref()?.next_after(now))
            .min()
            .filter(|_| !self.options.poll_only);
        match next {
            Some(t) => (self.clock.real(t - now) + Duration::from_millis(2)).min(self.options.tick),
            None => self.options.tick,
        }
    }

    /// A refused record means the lead is gone; anything else is logged
    /// and tried again next tick.
    fn on_error(&mut self, r: Result<()>) {
        match r {
            Ok(()) => {}
            Err(Error::Fenced(epoch)) => {
                self.leadership.lost();
                crate::metrics::leading(self.leadership.owner(), false);
                tracing::warn!(
                    epoch,
                    "lost the lead: a record was refused by the fence; now a standby"
                );
                self.cancel_all("this scheduler lost the lead");
            }
            Err(e) => {
                tracing::warn!(error = %tributary_model::error_chain(&e), "scheduler round failed; retrying")
            }
        }
    }

    fn cancel_all(&mut self, why: &str) {
        for (id, r) in self.running.drain() {
            tracing::info!(run = id, job = %r.job, "{why}: cancelling the attempt");
            r.cancel.cancel();
        }
    }

    async fn lead(&mut self) -> Result<()> {
        match self.leadership.check().await? {
            Change::Same => Ok(()),
            Change::Took(epoch) => {
                tracing::info!(epoch, owner = self.leadership.owner(), "took the lead");
                crate::metrics::leading(self.leadership.owner(), true);
                self.recover().await
            }
            Change::Lost(epoch) => {
                tracing::warn!(
                    epoch,
                    "lost the lead: the lease was not renewed in time; now a standby"
                );
                self.cancel_all("this scheduler lost the lead");
                Ok(())
            }
        }
    }

    fn fence(&self) -> Result<tributary_lake::coordinator::Fence> {
        self.leadership.fence().cloned().ok_or(Error::Fenced(0))
    }

    /// Runs a predecessor left running: retried now (their attempt died
    /// with it), or failed after [`MAX_LOST`] such losses.
    async fn recover(&mut self) -> Result<()> {
        let fence = self.fence()?;
        let now = self.clock.now();
        for run in self.history.orphaned(&fence).await? {
            let lost = self
                .history
                .attempts(run.id)
                .await?
                .iter()
                .filter(|a| a.state == "lost" || a.state == "running")
                .count() as i32;
            let retry = lost < MAX_LOST;
            let finish = Finish {
                attempt_state: "lost",
                run_state: if retry {
                    state::RETRYING
                } else {
                    state::FAILED
                },
                error: Some(format!(
                    "the scheduler running attempt {} stopped ({} epoch {})",
                    run.attempts,
                    run.scheduler.as_deref().unwrap_or("?"),
                    run.epoch.unwrap_or(0)
                )),
                summary: None,
                next_attempt_at: retry.then_some(now),
                at: now,
            };
            tracing::info!(run = %run.run_key, retry, "recovering a run its previous scheduler left running");
            self.history
                .finish_attempt(&fence, run.id, run.attempts, &finish)
                .await?;
        }
        Ok(())
    }

    /// Re-reads the job folder; keeps the last good version of a job whose
    /// file turned bad.
    fn reload(&mut self) {
        let fresh = match Dag::load(&self.options.jobs_dir) {
            Ok(d) => d,
            Err(e) => {
                let msg = e.to_string();
                if self.reported.insert(msg.clone()) {
                    tracing::error!(error = %msg, "job folder unreadable; keeping the jobs loaded before");
                }
                return;
            }
        };
        let mut jobs = fresh.jobs;
        for e in &fresh.errors {
            let msg = e.to_string();
            if self.reported.insert(msg.clone()) {
                tracing::error!(error = %msg, "job file refused; the other jobs keep their schedule");
            }
            if let Error::JobFile { job, .. } = e
                && let Some(old) = self.dag.jobs.get(job)
            {
                jobs.insert(job.clone(), old.clone());
            }
        }
        self.reported
            .retain(|m| fresh.errors.iter().any(|e| &e.to_string() == m));
        self.dag = Dag::from_jobs(jobs.into_values().collect(), Vec::new());
    }

    async fn round(&mut self) -> Result<()> {
        self.reload();
        self.schedule().await?;
        self.keep_running().await?;
        self.dispatch().await
    }

    async fn schedule(&mut self) -> Result<()> {
        let fence = self.fence()?;
        let now = self.clock.now();
        let jobs: Vec<Job> = self
            .dag
            .jobs
            .values()
            .filter(|j| j.schedule.is_some())
            .cloned()
            .collect();
        for job in jobs {
            let schedule = job.schedule.as_ref().expect("filtered");
            let Some(cursor) = self.history.cursor(&job.name).await? else {
                // A new job starts from now: nothing before it existed is owed.
                self.history
                    .create_scheduled(&fence, &job.name, &[], now, state::QUEUED)
                    .await?;
                continue;
            };
            let Some((fires, newest)) = plan(schedule, job.catchup, cursor, now) else {
                continue;
            };
            let runs: Vec<NewRun> = fires
                .iter()
                .map(|(t, why)| NewRun {
                    run_key: run_key(&job.name, *t),
                    job: job.name.clone(),
                    logical_time: *t,
                    logical_date: job.partitioned.then(|| schedule.date_of(*t)),
                    trigger: why,
                    due_at: *t,
                    batch: None,
                })
                .collect();
            let created = self
                .history
                .create_scheduled(&fence, &job.name, &runs, newest, state::QUEUED)
                .await?;
            if fires.len() > 1 || fires.first().is_some_and(|(_, w)| *w == trigger::CATCHUP) {
                tracing::info!(job = %job.name, created, policy = ?job.catchup, "caught up on missed fire times");
            }
        }
        Ok(())
    }

    /// Keeps one run of each continuous job going: a new run when none
    /// waits or runs and the last ended at least `retry.backoff` ago (so a
    /// command that keeps failing does not spin).
    async fn keep_running(&mut self) -> Result<()> {
        let fence = self.fence()?;
        let now = self.clock.now();
        let jobs: Vec<Job> = self
            .dag
            .jobs
            .values()
            .filter(|j| j.continuous)
            .cloned()
            .collect();
        for job in jobs {
            let (going, ended) = self.history.continuous_state(&job.name).await?;
            let pause = chrono::Duration::from_std(job.retry.backoff).unwrap_or_default();
            if going || ended.is_some_and(|e| now - e < pause) {
                continue;
            }
            let run = NewRun {
                run_key: run_key(&job.name, now),
                job: job.name.clone(),
                logical_time: now,
                logical_date: None,
                trigger: trigger::CONTINUOUS,
                due_at: now,
                batch: None,
            };
            if self
                .history
                .create_scheduled(&fence, &job.name, &[run], now, state::QUEUED)
                .await?
                > 0
            {
                tracing::info!(job = %job.name, "continuous job (re)started");
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self) -> Result<()> {
        let fence = self.fence()?;
        let now = self.clock.now();
        for run in self.history.waiting(now).await? {
            if self.running.contains_key(&run.id) {
                continue;
            }
            let Some(job) = self.dag.jobs.get(&run.job).cloned() else {
                self.history
                    .close_unstarted(
                        &fence,
                        run.id,
                        state::FAILED,
                        "no such job (its file is gone or refused)",
                        now,
                    )
                    .await?;
                continue;
            };
            // A backfill's runs: up to its parallelism at once, beside
            // whatever else of the job runs (they write other dates).
            if let Some(batch) = &run.batch {
                let limit = run.max_parallel.unwrap_or(1).max(1) as usize;
                let running = self
                    .running
                    .values()
                    .filter(|r| r.batch.as_ref() == Some(batch))
                    .count();
                if running < limit {
                    self.start(&fence, &job, &run).await?;
                }
                continue;
            }
            let busy: Vec<i64> = self
                .running
                .iter()
                .filter(|(_, r)| r.job == job.name)
                .map(|(id, _)| *id)
                .collect();
            if !busy.is_empty() {
                match job.concurrency {
                    Concurrency::Queue => continue,
                    Concurrency::Skip if run.attempts == 0 => {
                        self.history
                            .close_unstarted(
                                &fence,
                                run.id,
                                state::SKIPPED,
                                "a run of the job was still running",
                                now,
                            )
                            .await?;
                        tracing::info!(run = %run.run_key, "skipped: a run of the job is still running");
                        continue;
                    }
                    Concurrency::Skip => continue,
                    Concurrency::Cancel => {
                        for id in busy {
                            if let Some(r) = self.running.get(&id) {
                                tracing::info!(
                                    run = id,
                                    "cancelling the running run for a newer one"
                                );
                                r.cancel.cancel();
                            }
                        }
                        continue;
                    }
                }
            }
            self.start(&fence, &job, &run).await?;
        }
        Ok(())
    }

    async fn start(
        &mut self,
        fence: &tributary_lake::coordinator::Fence,
        job: &Job,
        run: &Run,
    ) -> Result<()> {
        let now = self.clock.now();
        let Some(n) = self.history.start_attempt(fence, run.id, now).await? else {
            return Ok(());
        };
        let delay = (now - run.due_at).num_milliseconds().max(0) as f64 / 1000.0;
        tracing::info!(run = %run.run_key, attempt = n, delay_s = delay, "run started");
        if n == 1 {
            crate::metrics::started(delay);
        }
        let cancel = CancellationToken::new();
        self.running.insert(
            run.id,
            Running {
                job: job.name.clone(),
                batch: run.batch.clone(),
                attempt: n,
                cancel: cancel.clone(),
                started: std::time::Instant::now(),
            },
        );
        let ctx = RunContext {
            run_key: run.run_key.clone(),
            logical_time: run.logical_time,
            logical_date: run.logical_date,
            attempt: n,
        };
        let (runner, job, tx, id) = (
            self.runner.clone(),
            job.clone(),
            self.done_tx.clone(),
            run.id,
        );
        tokio::spawn(async move {
            let outcome = attempt(runner.as_ref(), &job, ctx, cancel).await;
            let _ = tx.send(Done {
                run_id: id,
                attempt: n,
                outcome,
            });
        });
        Ok(())
    }

    async fn finished(&mut self, done: Done) -> Result<()> {
        let Some(r) = self.running.remove(&done.run_id) else {
            // Cancelled when the lead was lost: the next leader recovers it.
            return Ok(());
        };
        debug_assert_eq!(r.attempt, done.attempt);
        let fence = self.fence()?;
        let now = self.clock.now();
        let Some(run) = self.history.run(done.run_id).await? else {
            return Ok(());
        };
        let retry = self
            .dag
            .jobs
            .get(&run.job)
            .map(|j| j.retry.clone())
            .unwrap_or_default();
        let finish = conclude(
            &retry,
            done.attempt,
            &done.outcome,
            now,
            rand::random::<f64>(),
        );
        self.history
            .finish_attempt(&fence, done.run_id, done.attempt, &finish)
            .await?;
        crate::metrics::ended(
            &run.job,
            finish.run_state,
            r.started.elapsed().as_secs_f64(),
        );
        tracing::info!(
            run = %run.run_key,
            attempt = done.attempt,
            state = finish.run_state,
            error = finish.error.as_deref().unwrap_or(""),
            "attempt ended"
        );
        if finish.run_state == state::SUCCEEDED {
            self.downstream(&fence, &run).await?;
        }
        Ok(())
    }

    /// Runs of the jobs below `run`'s whose upstreams all succeeded for its
    /// logical time.
    async fn downstream(
        &mut self,
        fence: &tributary_lake::coordinator::Fence,
        run: &Run,
    ) -> Result<()> {
        let below: Vec<Job> = self.dag.downstream(&run.job).into_iter().cloned().collect();
        for d in below {
            if !self
                .history
                .all_succeeded(&d.depends_on, run.logical_time)
                .await?
            {
                continue;
            }
            let new = NewRun {
                run_key: run_key(&d.name, run.logical_time),
                job: d.name.clone(),
                logical_time: run.logical_time,
                logical_date: run.logical_date,
                trigger: trigger::UPSTREAM,
                due_at: self.clock.now(),
                batch: None,
            };
            let created = self
                .history
                .create_scheduled(fence, &d.name, &[new], run.logical_time, state::QUEUED)
                .await?;
            if created > 0 {
                tracing::info!(job = %d.name, after = %run.job, "downstream run queued");
            }
        }
        Ok(())
    }

    async fn stop(&mut self) {
        if let Some(fence) = self.leadership.fence().cloned() {
            let now = self.clock.now();
            for (id, r) in self.running.drain() {
                r.cancel.cancel();
                let finish = Finish {
                    attempt_state: "lost",
                    run_state: state::RETRYING,
                    error: Some("the scheduler was stopped during the attempt".into()),
                    summary: None,
                    next_attempt_at: Some(now),
                    at: now,
                };
                if let Err(e) = self
                    .history
                    .finish_attempt(&fence, id, r.attempt, &finish)
                    .await
                {
                    tracing::warn!(run = id, error = %e, "could not record an interrupted attempt; the next leader recovers it");
                }
            }
        }
        if let Err(e) = self.leadership.release().await {
            tracing::warn!(error = %e, "could not release the scheduler lease; a standby takes over when it expires");
        }
        tracing::info!("scheduler stopped");
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap()
    }

    #[test]
    fn catch_up_policies_after_a_scheduler_was_down_for_an_hour() {
        let s = Schedule::new("*/15 * * * *", "UTC").unwrap();
        // Cursor at 10:00; no scheduler ran until 11:05.
        let (all, cursor) = plan(&s, Catchup::All, t(10, 0), t(11, 5)).unwrap();
        assert_eq!(
            all,
            [
                (t(10, 15), trigger::CATCHUP),
                (t(10, 30), trigger::CATCHUP),
                (t(10, 45), trigger::CATCHUP),
                (t(11, 0), trigger::CATCHUP)
            ]
        );
        assert_eq!(cursor, t(11, 0));
        let (latest, _) = plan(&s, Catchup::Latest, t(10, 0), t(11, 5)).unwrap();
        assert_eq!(latest, [(t(11, 0), trigger::CATCHUP)]);
        let (none, cursor) = plan(&s, Catchup::None, t(10, 0), t(11, 5)).unwrap();
        assert!(none.is_empty());
        assert_eq!(
            cursor,
            t(11, 0),
            "the missed times are passed over, not owed"
        );
    }

    #[test]
    fn a_running_scheduler_creates_each_fire_time_once() {
        let s = Schedule::new("*/15 * * * *", "UTC").unwrap();
        assert!(plan(&s, Catchup::All, t(10, 0), t(10, 14)).is_none());
        let (runs, cursor) = plan(&s, Catchup::None, t(10, 0), t(10, 15)).unwrap();
        assert_eq!(runs, [(t(10, 15), trigger::SCHEDULE)]);
        assert!(plan(&s, Catchup::None, cursor, t(10, 16)).is_none());
    }

    #[test]
    fn a_day_of_minute_schedules_on_a_fake_clock() {
        // 1440 ticks a minute apart plus a little: every fire time once, on time.
        let s = Schedule::new("* * * * *", "UTC").unwrap();
        let mut cursor = t(0, 0);
        let mut created = Vec::new();
        for minute in 1..=1440i64 {
            let now =
                t(0, 0) + chrono::Duration::minutes(minute) + chrono::Duration::milliseconds(300);
            if let Some((runs, c)) = plan(&s, Catchup::All, cursor, now) {
                for (time, why) in runs {
                    assert_eq!(why, trigger::SCHEDULE);
                    assert!(now - time < chrono::Duration::seconds(1), "delay at {time}");
                    created.push(time);
                }
                cursor = c;
            }
        }
        assert_eq!(created.len(), 1440);
        let distinct: BTreeSet<_> = created.iter().collect();
        assert_eq!(distinct.len(), 1440);
    }

    #[test]
    fn run_keys_name_the_job_and_its_logical_time() {
        assert_eq!(run_key("marts", t(10, 15)), "marts@2026-12-01T10:15:00Z");
    }
}
