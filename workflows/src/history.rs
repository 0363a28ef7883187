//! Run history in the catalog database (schema `tributary_workflows`), and
//! the fenced statements the leader records runs with.
//!
//! `runs`: one row per run, unique by `run_key` (`<job>@<logical time>` for
//! scheduled and upstream-triggered runs, with `#manual-…` or `#backfill-…`
//! for the others), so a logical run can be created once, whoever tries.
//! `attempts`: one row per attempt of a run. `cursors`: per scheduled job,
//! the newest fire time a run was created for (what catch-up starts from).
//!
//! Every statement by which the leader creates or starts a run checks, in
//! the same statement and under a share lock of the lease row, that the
//! scheduler lease (`tributary_lake.leases`, resource
//! [`crate::leader::RESOURCE`]) still has the leader's owner and epoch: a
//! scheduler that was paused and lost the lead can record nothing after
//! its successor took over.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::{Client, NoTls};
use tributary_lake::coordinator::Fence;

use crate::{Error, Result};

const SCHEMA: &str = "
CREATE SCHEMA IF NOT EXISTS tributary_workflows;
CREATE TABLE IF NOT EXISTS tributary_workflows.runs (
    id bigserial PRIMARY KEY,
    run_key text NOT NULL UNIQUE,
    job text NOT NULL,
    logical_time timestamptz NOT NULL,
    logical_date date,
    trigger text NOT NULL,
    state text NOT NULL,
    attempts int NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    due_at timestamptz NOT NULL,
    started_at timestamptz,
    ended_at timestamptz,
    next_attempt_at timestamptz,
    error text,
    summary text,
    scheduler text,
    epoch bigint
);
CREATE INDEX IF NOT EXISTS runs_job_time ON tributary_workflows.runs (job, logical_time);
CREATE INDEX IF NOT EXISTS runs_open ON tributary_workflows.runs (state)
    WHERE state IN ('queued', 'running', 'retrying');
CREATE TABLE IF NOT EXISTS tributary_workflows.attempts (
    run_id bigint NOT NULL REFERENCES tributary_workflows.runs (id),
    attempt int NOT NULL,
    state text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at timestamptz,
    error text,
    summary text,
    scheduler text NOT NULL,
    epoch bigint NOT NULL,
    PRIMARY KEY (run_id, attempt)
);
-- A backfill's runs share a batch and run at most max_parallel at once.
ALTER TABLE tributary_workflows.runs ADD COLUMN IF NOT EXISTS batch text;
ALTER TABLE tributary_workflows.runs ADD COLUMN IF NOT EXISTS max_parallel int;
CREATE TABLE IF NOT EXISTS tributary_workflows.cursors (
    job text PRIMARY KEY,
    last_fire timestamptz NOT NULL
);
";

/// The lease check every fenced statement starts with: `$1` resource,
/// `$2` owner, `$3` epoch.
const LEASE: &str = "lease AS (
    SELECT 1 FROM tributary_lake.leases
     WHERE resource = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()
     FOR SHARE
)";

/// A run's state.
pub mod state {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const RETRYING: &str = "retrying";
    pub const SUCCEEDED: &str = "succeeded";
    pub const FAILED: &str = "failed";
    pub const SKIPPED: &str = "skipped";
    pub const CANCELLED: &str = "cancelled";
}

/// Why a run exists.
pub mod trigger {
    pub const SCHEDULE: &str = "schedule";
    pub const CATCHUP: &str = "catchup";
    pub const UPSTREAM: &str = "upstream";
    pub const MANUAL: &str = "manual";
    pub const BACKFILL: &str = "backfill";
    /// A continuous job's run, started because none was going.
    pub const CONTINUOUS: &str = "continuous";
}

/// One run as recorded.
#[derive(Clone, Debug)]
pub struct Run {
    pub id: i64,
    pub run_key: String,
    pub job: String,
    pub logical_time: DateTime<Utc>,
    pub logical_date: Option<NaiveDate>,
    pub trigger: String,
    pub state: String,
    pub attempts: i32,
    pub due_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub summary: Option<String>,
    pub scheduler: Option<String>,
    pub epoch: Option<i64>,
    /// The backfill this run belongs to, and how many of its runs may run
    /// at once.
    pub batch: Option<String>,
    pub max_parallel: Option<i32>,
}

const RUN_COLUMNS: &str = "id, run_key, job, logical_time, logical_date, trigger, state, attempts, \
     due_at, started_at, ended_at, next_attempt_at, error, summary, scheduler, epoch, batch, max_parallel";

fn run_of(r: &tokio_postgres::Row) -> Run {
    Run {
        id: r.get(0),
        run_key: r.get(1),
        job: r.get(2),
        logical_time: r.get(3),
        logical_date: r.get(4),
        trigger: r.get(5),
        state: r.get(6),
        attempts: r.get(7),
        due_at: r.get(8),
        started_at: r.get(9),
        ended_at: r.get(10),
        next_attempt_at: r.get(11),
        error: r.get(12),
        summary: r.get(13),
        scheduler: r.get(14),
        epoch: r.get(15),
        batch: r.get(16),
        max_parallel: r.get(17),
    }
}

/// A new run to record.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub run_key: String,
    pub job: String,
    pub logical_time: DateTime<Utc>,
    pub logical_date: Option<NaiveDate>,
    pub trigger: &'static str,
    pub due_at: DateTime<Utc>,
    /// A backfill's batch and its parallelism (`None` for other runs).
    pub batch: Option<(String, i32)>,
}

impl NewRun {
    /// A run asked for by hand (`trigger`, `backfill`, the web console):
    /// for `date` (midnight on the job's clock), or now. `tag` is `manual`
    /// (a fresh `manual-…` key each time) or a backfill's batch; `order`
    /// keeps a backfill's runs in date order (the scheduler starts waiting
    /// runs oldest first); `parallel` is the batch's parallelism.
    pub fn manual(
        job: &crate::Job,
        date: Option<NaiveDate>,
        why: &'static str,
        tag: &str,
        order: i64,
        parallel: Option<i32>,
    ) -> Result<NewRun> {
        use chrono::TimeZone;
        let now = Utc::now();
        let logical_time = match date {
            Some(d) => {
                let midnight = d.and_hms_opt(0, 0, 0).expect("midnight");
                match &job.schedule {
                    Some(s) => {
                        s.tz.from_local_datetime(&midnight)
                            .earliest()
                            .map(|t| t.with_timezone(&Utc))
                            .ok_or_else(|| {
                                Error::Usage(format!("{d} has no midnight in {}", s.tz.name()))
                            })?
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
                crate::scheduler::run_key(&job.name, logical_time)
            ),
            job: job.name.clone(),
            logical_time,
            logical_date: date.or_else(|| job.partitioned.then(|| logical_time.date_naive())),
            trigger: why,
            due_at: now + chrono::Duration::milliseconds(order),
            batch: parallel.map(|p| (tag.clone(), p)),
        })
    }
}

/// How an attempt ended, and what becomes of its run.
#[derive(Clone, Debug)]
pub struct Finish {
    /// `succeeded`, `failed`, `timed_out`, `cancelled`, `lost`.
    pub attempt_state: &'static str,
    pub run_state: &'static str,
    pub error: Option<String>,
    pub summary: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
}

/// The history database.
pub struct History {
    client: Client,
}

fn db(what: &str) -> impl FnOnce(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Db {
        what: what.to_string(),
        source,
    }
}

impl History {
    /// Connects to the catalog database and creates the schema when missing.
    pub async fn connect(dsn: &str) -> Result<History> {
        let (client, conn) = tokio_postgres::connect(dsn, NoTls)
            .await
            .map_err(db("connecting to the catalog database"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "workflows history connection ended");
            }
        });
        // Two schedulers starting at once may race on CREATE IF NOT EXISTS:
        // one lock makes the creation serial.
        client
            .batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock(7301); {SCHEMA} COMMIT;"
            ))
            .await
            .map_err(db("creating the tributary_workflows schema"))?;
        Ok(History { client })
    }

    /// Creates `runs` as the leader, and moves the job's cursor to
    /// `cursor`, in one transaction. Returns the runs created (a run whose
    /// key exists is not created again); `Err(Fenced)` when the lease is no
    /// longer the leader's.
    pub async fn create_scheduled(
        &mut self,
        fence: &Fence,
        job: &str,
        runs: &[NewRun],
        cursor: DateTime<Utc>,
        state: &str,
    ) -> Result<usize> {
        let tx = self
            .client
            .transaction()
            .await
            .map_err(db("starting a transaction"))?;
        let held = tx
            .query_opt(
                &format!("WITH {LEASE} SELECT 1 FROM lease"),
                &[&fence.resource, &fence.owner, &fence.epoch],
            )
            .await
            .map_err(db("checking the lease"))?;
        if held.is_none() {
            return Err(Error::Fenced(fence.epoch));
        }
        let mut created = 0;
        for r in runs {
            created += tx
                .execute(
                    "INSERT INTO tributary_workflows.runs
                         (run_key, job, logical_time, logical_date, trigger, state, due_at, scheduler, epoch)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (run_key) DO NOTHING",
                    &[
                        &r.run_key,
                        &r.job,
                        &r.logical_time,
                        &r.logical_date,
                        &r.trigger,
                        &state,
                        &r.due_at,
                        &fence.owner,
                        &fence.epoch,
                    ],
                )
                .await
                .map_err(db("recording a run"))? as usize;
        }
        tx.execute(
            "INSERT INTO tributary_workflows.cursors (job, last_fire) VALUES ($1, $2)
             ON CONFLICT (job) DO UPDATE SET last_fire = greatest(cursors.last_fire, EXCLUDED.last_fire)",
            &[&job, &cursor],
        )
        .await
        .map_err(db("moving a schedule cursor"))?;
        tx.commit().await.map_err(db("committing runs"))?;
        Ok(created)
    }

    /// Records a run asked for from outside the scheduler (trigger,
    /// backfill): no lease needed, the run key keeps it single.
    pub async fn enqueue(&self, run: &NewRun) -> Result<Option<i64>> {
        let row = self
            .client
            .query_opt(
                "INSERT INTO tributary_workflows.runs
                     (run_key, job, logical_time, logical_date, trigger, state, due_at, batch, max_parallel)
                 VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $8)
                 ON CONFLICT (run_key) DO NOTHING RETURNING id",
                &[
                    &run.run_key,
                    &run.job,
                    &run.logical_time,
                    &run.logical_date,
                    &run.trigger,
                    &run.due_at,
                    &run.batch.as_ref().map(|b| b.0.as_str()),
                    &run.batch.as_ref().map(|b| b.1),
                ],
            )
            .await
            .map_err(db("queueing a run"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The cursor of a scheduled job.
    pub async fn cursor(&self, job: &str) -> Result<Option<DateTime<Utc>>> {
        let row = self
            .client
            .query_opt(
                "SELECT last_fire FROM tributary_workflows.cursors WHERE job = $1",
                &[&job],
            )
            .await
            .map_err(db("reading a schedule cursor"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Starts the next attempt of a queued or retrying run, as the leader.
    /// Returns the attempt number, or `None` when the run is no longer
    /// waiting; `Err(Fenced)` when the lease is no longer the leader's.
    pub async fn start_attempt(
        &self,
        fence: &Fence,
        run_id: i64,
        at: DateTime<Utc>,
    ) -> Result<Option<i32>> {
        let row = self
            .client
            .query_opt(
                &format!(
                    "WITH {LEASE}, r AS (
                         UPDATE tributary_workflows.runs
                            SET state = 'running', attempts = attempts + 1,
                                started_at = coalesce(started_at, $5), next_attempt_at = NULL,
                                scheduler = $2, epoch = $3
                          WHERE id = $4 AND state IN ('queued', 'retrying') AND EXISTS (SELECT 1 FROM lease)
                          RETURNING id, attempts
                     )
                     INSERT INTO tributary_workflows.attempts (run_id, attempt, state, started_at, scheduler, epoch)
                     SELECT id, attempts, 'running', $5, $2, $3 FROM r
                     RETURNING attempt"
                ),
                &[&fence.resource, &fence.owner, &fence.epoch, &run_id, &at],
            )
            .await
            .map_err(db("starting an attempt"))?;
        match row {
            Some(r) => Ok(Some(r.get(0))),
            None => {
                if self.holds(fence).await? {
                    Ok(None)
                } else {
                    Err(Error::Fenced(fence.epoch))
                }
            }
        }
    }

    async fn holds(&self, fence: &Fence) -> Result<bool> {
        Ok(self
            .client
            .query_opt(
                &format!("WITH {LEASE} SELECT 1 FROM lease"),
                &[&fence.resource, &fence.owner, &fence.epoch],
            )
            .await
            .map_err(db("checking the lease"))?
            .is_some())
    }

    /// Ends attempt `attempt` of a run and sets the run's state. Fenced:
    /// a scheduler that lost the lead leaves the run to its successor's
    /// recovery.
    pub async fn finish_attempt(
        &self,
        fence: &Fence,
        run_id: i64,
        attempt: i32,
        f: &Finish,
    ) -> Result<()> {
        let ended = matches!(
            f.run_state,
            state::SUCCEEDED | state::FAILED | state::CANCELLED | state::SKIPPED
        );
        let n = self
            .client
            .execute(
                &format!(
                    "WITH {LEASE}, a AS (
                         UPDATE tributary_workflows.attempts
                            SET state = $6, ended_at = $7, error = $8, summary = $9
                          WHERE run_id = $4 AND attempt = $5 AND EXISTS (SELECT 1 FROM lease)
                          RETURNING run_id
                     )
                     UPDATE tributary_workflows.runs
                        SET state = $10, ended_at = CASE WHEN $11 THEN $7 END,
                            error = $8, summary = $9, next_attempt_at = $12
                      WHERE id IN (SELECT run_id FROM a)"
                ),
                &[
                    &fence.resource,
                    &fence.owner,
                    &fence.epoch,
                    &run_id,
                    &attempt,
                    &f.attempt_state,
                    &f.at,
                    &f.error,
                    &f.summary,
                    &f.run_state,
                    &ended,
                    &f.next_attempt_at,
                ],
            )
            .await
            .map_err(db("finishing an attempt"))?;
        if n == 0 {
            return Err(Error::Fenced(fence.epoch));
        }
        Ok(())
    }

    /// Sets the state of a run that never started (skipped, or cancelled
    /// before it ran).
    pub async fn close_unstarted(
        &self,
        fence: &Fence,
        run_id: i64,
        run_state: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        let n = self
            .client
            .execute(
                &format!(
                    "WITH {LEASE}
                     UPDATE tributary_workflows.runs SET state = $5, error = $6, ended_at = $7
                      WHERE id = $4 AND state IN ('queued', 'retrying') AND EXISTS (SELECT 1 FROM lease)"
                ),
                &[
                    &fence.resource,
                    &fence.owner,
                    &fence.epoch,
                    &run_id,
                    &run_state,
                    &reason,
                    &at,
                ],
            )
            .await
            .map_err(db("closing a run"))?;
        if n == 0 && !self.holds(fence).await? {
            return Err(Error::Fenced(fence.epoch));
        }
        Ok(())
    }

    /// Runs waiting to start: queued, or retrying and due, oldest first.
    pub async fn waiting(&self, now: DateTime<Utc>) -> Result<Vec<Run>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM tributary_workflows.runs
                      WHERE state = 'queued' OR (state = 'retrying' AND next_attempt_at <= $1)
                      ORDER BY due_at, id"
                ),
                &[&now],
            )
            .await
            .map_err(db("reading waiting runs"))?;
        Ok(rows.iter().map(run_of).collect())
    }

    /// Runs recorded as running by a scheduler other than this epoch's
    /// leader: their attempt died with it.
    pub async fn orphaned(&self, fence: &Fence) -> Result<Vec<Run>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM tributary_workflows.runs
                      WHERE state = 'running' AND (epoch IS DISTINCT FROM $1 OR scheduler IS DISTINCT FROM $2)"
                ),
                &[&fence.epoch, &fence.owner],
            )
            .await
            .map_err(db("reading orphaned runs"))?;
        Ok(rows.iter().map(run_of).collect())
    }

    /// Of a continuous job: whether a run of it is waiting or running, and
    /// when its newest run ended.
    pub async fn continuous_state(&self, job: &str) -> Result<(bool, Option<DateTime<Utc>>)> {
        let row = self
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE state IN ('queued', 'running', 'retrying')),
                        max(ended_at)
                   FROM tributary_workflows.runs WHERE job = $1",
                &[&job],
            )
            .await
            .map_err(db("reading a continuous job's runs"))?;
        Ok((row.get::<_, i64>(0) > 0, row.get(1)))
    }

    /// Whether every job of `jobs` succeeded for `logical_time`.
    pub async fn all_succeeded(
        &self,
        jobs: &[String],
        logical_time: DateTime<Utc>,
    ) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "SELECT count(DISTINCT job) FROM tributary_workflows.runs
                  WHERE job = ANY($1) AND logical_time = $2 AND state = 'succeeded'",
                &[&jobs, &logical_time],
            )
            .await
            .map_err(db("reading upstream runs"))?;
        Ok(row.get::<_, i64>(0) as usize == jobs.len())
    }

    /// One run by id.
    pub async fn run(&self, id: i64) -> Result<Option<Run>> {
        let row = self
            .client
            .query_opt(
                &format!("SELECT {RUN_COLUMNS} FROM tributary_workflows.runs WHERE id = $1"),
                &[&id],
            )
            .await
            .map_err(db("reading a run"))?;
        Ok(row.as_ref().map(run_of))
    }

    /// The newest runs (of `job`), newest first.
    pub async fn recent(&self, job: Option<&str>, limit: i64) -> Result<Vec<Run>> {
        let rows = self
            .client
            .query(
                &format!(
                    "SELECT {RUN_COLUMNS} FROM tributary_workflows.runs
                      WHERE $1::text IS NULL OR job = $1
                      ORDER BY coalesce(started_at, due_at) DESC, id DESC LIMIT $2"
                ),
                &[&job, &limit],
            )
            .await
            .map_err(db("reading the history"))?;
        Ok(rows.iter().map(run_of).collect())
    }

    /// Every attempt, with its run's id, in order.
    pub async fn all_attempts(&self) -> Result<Vec<(i64, Attempt)>> {
        let rows = self
            .client
            .query(
                "SELECT run_id, attempt, state, started_at, ended_at, error, scheduler, epoch
                   FROM tributary_workflows.attempts ORDER BY run_id, attempt",
                &[],
            )
            .await
            .map_err(db("reading attempts"))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    Attempt {
                        attempt: r.get(1),
                        state: r.get(2),
                        started_at: r.get(3),
                        ended_at: r.get(4),
                        error: r.get(5),
                        scheduler: r.get(6),
                        epoch: r.get(7),
                    },
                )
            })
            .collect())
    }

    /// Attempts of a run, in order: (attempt, state, start, end, error).
    pub async fn attempts(&self, run_id: i64) -> Result<Vec<Attempt>> {
        let rows = self
            .client
            .query(
                "SELECT attempt, state, started_at, ended_at, error, scheduler, epoch
                   FROM tributary_workflows.attempts WHERE run_id = $1 ORDER BY attempt",
                &[&run_id],
            )
            .await
            .map_err(db("reading attempts"))?;
        Ok(rows
            .iter()
            .map(|r| Attempt {
                attempt: r.get(0),
                state: r.get(1),
                started_at: r.get(2),
                ended_at: r.get(3),
                error: r.get(4),
                scheduler: r.get(5),
                epoch: r.get(6),
            })
            .collect())
    }
}

/// One attempt as recorded.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub attempt: i32,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub scheduler: String,
    pub epoch: i64,
}
