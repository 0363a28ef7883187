//! A job file: what a job runs, when, after what, and how its runs behave.
//!
//! ```toml
//! # workflows/jobs/marts.toml: the job `marts`
//! description = "the gold star schema, incrementally"
//! schedule = "*/15 * * * *"     # cron: minute hour day-of-month month day-of-week
//! timezone = "Europe/Berlin"    # the schedule's wall clock (default UTC)
//! timeout = "20m"               # an attempt running longer is stopped and fails
//! concurrency = "skip"          # a run due while one runs: skip | queue | cancel (the old one)
//! catchup = "latest"            # runs missed while no scheduler ran: all | latest | none
//! partitioned = false           # true: each run is for a logical date ({{ds}})
//!
//! [task]
//! kind = "marts"                # marts | data_tests | optimize | verify | risk_profile | sql | shell
//!
//! [retry]
//! attempts = 3                  # attempts in all
//! backoff = "30s"               # before the 2nd attempt; doubled each time
//! max_backoff = "10m"
//! jitter = 0.2                  # each delay moved by up to ±20%
//! ```
//!
//! A job with `depends_on = ["a", "b"]` has no schedule of its own: its run
//! for a logical time starts when `a` and `b` both succeeded for that
//! logical time (see [`crate::dag`]).
//!
//! A job with `continuous = true` has no schedule either: the leader keeps
//! one run of it going at all times (the marts following the stream, or a
//! long-running command), restarts it `retry.backoff` after it ends, and a
//! new leader takes its run over like any run its predecessor left.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use croner::Cron;
use serde::Deserialize;

use crate::{Error, Result};

/// What a job runs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// `tributary etl run marts`.
    Marts {
        #[serde(default)]
        full_refresh: bool,
    },
    /// `tributary etl test marts`.
    DataTests,
    /// `tributary lake optimize` of a layer (all by default).
    Optimize {
        #[serde(default)]
        layer: Option<String>,
    },
    /// `tributary verify`: silver against the sources, row for row.
    Verify,
    /// `tributary etl run risk-profile`.
    RiskProfile,
    /// A query over the lake whose result replaces `gold.<into>` (or, with
    /// `partition_column`, the rows of the run's logical date in it).
    /// `{{ds}}` in the statement is the logical date.
    Sql {
        statement: String,
        into: String,
        #[serde(default)]
        partition_column: Option<String>,
    },
    /// A shell command (`sh -c`); `{{ds}}` is the logical date, and the
    /// environment has `TRIBUTARY_DS` and `TRIBUTARY_RUN_KEY`.
    Shell { command: String },
}

impl Task {
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Marts { .. } => "marts",
            Task::DataTests => "data_tests",
            Task::Optimize { .. } => "optimize",
            Task::Verify => "verify",
            Task::RiskProfile => "risk_profile",
            Task::Sql { .. } => "sql",
            Task::Shell { .. } => "shell",
        }
    }
}

/// What happens to a run that falls due while another run of the job runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// The new run is recorded as skipped.
    #[default]
    Skip,
    /// The new run waits for the running one.
    Queue,
    /// The running one is cancelled and the new one starts.
    Cancel,
}

/// What a scheduler does with the fire times it missed while none ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Catchup {
    /// A run for every missed fire time, oldest first.
    All,
    /// One run, for the newest missed fire time.
    #[default]
    Latest,
    /// None: the schedule resumes from now.
    None,
}

/// Retries of a failed attempt, with exponential backoff and jitter.
#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Each delay is moved by up to this share either way.
    pub jitter: f64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 1,
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

impl Retry {
    /// The delay before attempt `next` (2 for the first retry), with
    /// `unit` in [0, 1) choosing the jitter.
    pub fn delay(&self, next: u32, unit: f64) -> Duration {
        let doublings = next.saturating_sub(2).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let factor = 1.0 + self.jitter * (2.0 * unit - 1.0);
        base.mul_f64(factor.max(0.0))
    }
}

/// A cron expression evaluated on a time zone's wall clock.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub expr: String,
    pub tz: Tz,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

impl Schedule {
    pub fn new(expr: &str, tz: &str) -> std::result::Result<Schedule, String> {
        let cron = Cron::from_str(expr).map_err(|e| format!("{expr:?}: {e}"))?;
        let tz = Tz::from_str(tz).map_err(|_| format!("{tz:?} is not an IANA time zone"))?;
        Ok(Schedule {
            expr: expr.to_string(),
            tz,
            cron,
        })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&t.with_timezone(&self.tz), false)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// Fire times in `(after, until]`, oldest first, at most `limit`.
    pub fn fires_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut t = after;
        while out.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= until => {
                    out.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        out
    }

    /// The newest fire time at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
    }

    /// The logical date of a fire time: its date on the schedule's clock.
    pub fn date_of(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }
}

/// A job, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    /// The file's name without `.toml`.
    pub name: String,
    pub file: PathBuf,
    pub description: String,
    pub schedule: Option<Schedule>,
    pub depends_on: Vec<String>,
    pub timeout: Duration,
    pub retry: Retry,
    pub concurrency: Concurrency,
    pub catchup: Catchup,
    pub partitioned: bool,
    /// Kept running by the leader instead of run on a schedule.
    pub continuous: bool,
    pub task: Task,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    #[serde(default)]
    description: String,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    concurrency: Concurrency,
    #[serde(default)]
    catchup: Catchup,
    #[serde(default)]
    partitioned: bool,
    #[serde(default)]
    continuous: bool,
    task: Task,
    #[serde(default)]
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<u32>,
    #[serde(default)]
    backoff: Option<String>,
    #[serde(default)]
    max_backoff: Option<String>,
    #[serde(default)]
    jitter: Option<f64>,
}

/// The default timeout of an attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Whether `name` can name a job (it becomes part of run keys and paths).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

impl Job {
    /// When the job runs, for a person: its cron and zone, `continuous`,
    /// its upstreams, or `on demand`.
    pub fn when(&self) -> String {
        match &self.schedule {
            Some(s) => format!("{} {}", s.expr, s.tz.name()),
            None if self.continuous => "continuous".into(),
            None if self.depends_on.is_empty() => "on demand".into(),
            None => format!("after {}", self.depends_on.join(",")),
        }
    }

    /// Parses and checks the job file at `path`, named by its file name.
    pub fn load(path: &Path) -> Result<Job> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
        Job::parse(path, &text)
    }

    /// Parses and checks `text` as the job file `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Job> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let bad = |field: &str, reason: String| Error::JobFile {
            file: path.display().to_string(),
            job: name.clone(),
            field: field.to_string(),
            reason,
        };
        if !valid_name(&name) {
            return Err(bad(
                "",
                "a job's file name must be lower-case letters, digits, `_` or `-` (at most 64)"
                    .into(),
            ));
        }
        let de = toml::Deserializer::parse(text).map_err(|e| bad("", e.to_string()))?;
        let raw: RawJob = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            bad(
                if field == "." { "" } else { &field },
                e.into_inner().to_string(),
            )
        })?;
        let duration = |field: &str, text: &str| {
            tributary_model::duration::parse(text)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    bad(
                        field,
                        format!("{text:?} is not a duration such as 90s, 10m, 2h"),
                    )
                })
        };
        let tz = raw.timezone.as_deref().unwrap_or("UTC");
        let schedule = match &raw.schedule {
            Some(expr) => Some(Schedule::new(expr, tz).map_err(|e| {
                if raw.timezone.is_some() && Tz::from_str(tz).is_err() {
                    bad("timezone", e)
                } else {
                    bad("schedule", e)
                }
            })?),
            None if raw.timezone.is_some() => {
                return Err(bad("timezone", "a time zone needs a schedule".into()));
            }
            None => None,
        };
        if schedule.is_some() && !raw.depends_on.is_empty() {
            return Err(bad(
                "schedule",
                "a job with depends_on runs when its upstream jobs succeed; give it no schedule"
                    .into(),
            ));
        }
        if raw.continuous {
            let conflict = [
                ("schedule", raw.schedule.is_some()),
                ("depends_on", !raw.depends_on.is_empty()),
                ("partitioned", raw.partitioned),
                ("timeout", raw.timeout.is_some()),
            ];
            if let Some((field, _)) = conflict.iter().find(|(_, set)| *set) {
                return Err(bad(
                    field,
                    "a continuous job is kept running, not scheduled or dated, and has no timeout"
                        .into(),
                ));
            }
            if !matches!(raw.task, Task::Marts { .. } | Task::Shell { .. }) {
                return Err(bad(
                    "task.kind",
                    "a continuous job runs the marts (following the stream) or a long-running shell command"
                        .into(),
                ));
            }
        }
        for d in &raw.depends_on {
            if d == &name {
                return Err(bad("depends_on", "a job cannot depend on itself".into()));
            }
        }
        let timeout = match &raw.timeout {
            Some(t) => duration("timeout", t)?,
            None => DEFAULT_TIMEOUT,
        };
        let mut retry = Retry::default();
        if let Some(r) = raw.retry {
            if let Some(a) = r.attempts {
                if a == 0 {
                    return Err(bad("retry.attempts", "must be at least 1".into()));
                }
                retry.attempts = a;
            }
            if let Some(b) = &r.backoff {
                retry.backoff = duration("retry.backoff", b)?;
            }
            if let Some(m) = &r.max_backoff {
                retry.max_backoff = duration("retry.max_backoff", m)?;
            }
            if let Some(j) = r.jitter {
                if !(0.0..=1.0).contains(&j) {
                    return Err(bad("retry.jitter", "must be between 0 and 1".into()));
                }
                retry.jitter = j;
            }
            if retry.max_backoff < retry.backoff {
                return Err(bad(
                    "retry.max_backoff",
                    "must not be below retry.backoff".into(),
                ));
            }
        }
        match &raw.task {
            Task::Sql {
                into,
                partition_column,
                ..
            } => {
                if !valid_name(into) || into.contains('-') {
                    return Err(bad(
                        "task.into",
                        "a gold table name: lower-case letters, digits and `_`".into(),
                    ));
                }
                if partition_column.is_some() && !raw.partitioned {
                    return Err(bad(
                        "task.partition_column",
                        "only a partitioned job (partitioned = true) writes by partition".into(),
                    ));
                }
            }
            Task::Optimize { layer: Some(l) }
                if !["bronze", "silver", "gold"].contains(&l.as_str()) =>
            {
                return Err(bad(
                    "task.layer",
                    format!("{l:?} is not bronze, silver or gold"),
                ));
            }
            _ => {}
        }
        Ok(Job {
            name,
            file: path.to_path_buf(),
            description: raw.description,
            schedule,
            depends_on: raw.depends_on,
            timeout,
            retry,
            concurrency: raw.concurrency,
            catchup: raw.catchup,
            partitioned: raw.partitioned,
            continuous: raw.continuous,
            task: raw.task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn parse(name: &str, text: &str) -> Result<Job> {
        Job::parse(Path::new(&format!("jobs/{name}.toml")), text)
    }

    fn err(name: &str, text: &str) -> String {
        parse(name, text).unwrap_err().to_string()
    }

    #[test]
    fn a_full_job_file_reads_with_its_defaults() {
        let j = parse(
            "marts",
            "schedule = \"*/15 * * * *\"\ntimezone = \"Europe/Berlin\"\n[task]\nkind = \"marts\"\n[retry]\nattempts = 3\nbackoff = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(j.name, "marts");
        assert_eq!(
            j.task,
            Task::Marts {
                full_refresh: false
            }
        );
        assert_eq!(j.retry.attempts, 3);
        assert_eq!(j.retry.backoff, Duration::from_secs(10));
        assert_eq!(j.concurrency, Concurrency::Skip);
        assert_eq!(j.catchup, Catchup::Latest);
        assert_eq!(j.timeout, DEFAULT_TIMEOUT);
        assert_eq!(j.schedule.unwrap().tz, chrono_tz::Europe::Berlin);
    }

    #[test]
    fn bad_files_name_the_file_and_the_field() {
        let e = err("a", "schedule = \"61 * * * *\"\n[task]\nkind = \"marts\"\n");
        assert!(e.contains("jobs/a.toml") && e.contains("`schedule`"), "{e}");
        let e = err(
            "a",
            "schedule = \"0 * * * *\"\ntimezone = \"Mars/Olympus\"\n[task]\nkind = \"marts\"\n",
        );
        assert!(
            e.contains("`timezone`") && e.contains("Mars/Olympus"),
            "{e}"
        );
        let e = err("a", "[task]\nkind = \"marts\"\n[retry]\nattempts = 0\n");
        assert!(e.contains("`retry.attempts`"), "{e}");
        let e = err("a", "[task]\nkind = \"marts\"\n[retry]\nbackof = \"1s\"\n");
        assert!(e.contains("retry") && e.contains("backof"), "{e}");
        let e = err("a", "[task]\nkind = \"rocket\"\n");
        assert!(e.contains("task") && e.contains("rocket"), "{e}");
        let e = err("a", "timeout = \"soon\"\n[task]\nkind = \"marts\"\n");
        assert!(e.contains("`timeout`") && e.contains("soon"), "{e}");
        let e = err("a", "depends_on = [\"a\"]\n[task]\nkind = \"marts\"\n");
        assert!(e.contains("itself"), "{e}");
        let e = err(
            "a",
            "schedule = \"0 * * * *\"\ndepends_on = [\"b\"]\n[task]\nkind = \"marts\"\n",
        );
        assert!(e.contains("no schedule"), "{e}");
        let e = err("Bad Name", "[task]\nkind = \"marts\"\n");
        assert!(e.contains("file name"), "{e}");
        let e = err(
            "a",
            "[task]\nkind = \"sql\"\nstatement = \"SELECT 1\"\ninto = \"x\"\npartition_column = \"ds\"\n",
        );
        assert!(e.contains("`task.partition_column`"), "{e}");
    }

    #[test]
    fn a_continuous_job_has_no_schedule_date_or_timeout_and_runs_marts_or_a_command() {
        let j = parse("follow", "continuous = true\n[task]\nkind = \"marts\"\n").unwrap();
        assert!(j.continuous && j.schedule.is_none());
        assert_eq!(j.when(), "continuous");
        for (field, line) in [
            ("schedule", "schedule = \"* * * * *\""),
            ("depends_on", "depends_on = [\"b\"]"),
            ("partitioned", "partitioned = true"),
            ("timeout", "timeout = \"1h\""),
        ] {
            let e = err(
                "follow",
                &format!("continuous = true\n{line}\n[task]\nkind = \"marts\"\n"),
            );
            assert!(
                e.contains(&format!("`{field}`")) && e.contains("continuous"),
                "{e}"
            );
        }
        let e = err("follow", "continuous = true\n[task]\nkind = \"verify\"\n");
        assert!(e.contains("`task.kind`"), "{e}");
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_with_bounded_jitter() {
        let r = Retry {
            attempts: 6,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            jitter: 0.2,
        };
        assert_eq!(r.delay(2, 0.5), Duration::from_secs(10));
        assert_eq!(r.delay(3, 0.5), Duration::from_secs(20));
        assert_eq!(r.delay(4, 0.5), Duration::from_secs(40));
        assert_eq!(r.delay(5, 0.5), Duration::from_secs(60));
        assert_eq!(r.delay(2, 0.0), Duration::from_secs(8));
        assert!(r.delay(2, 0.999) < Duration::from_secs(12));
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn schedules_follow_their_wall_clock_across_daylight_saving() {
        // 02:30 every day in Berlin: on 2026-03-29 that time does not exist
        // (clocks jump 02:00 -> 03:00); the run comes at 03:00 local, once.
        let s = Schedule::new("30 2 * * *", "Europe/Berlin").unwrap();
        let fires = s.fires_between(utc(2026, 3, 27, 0, 0), utc(2026, 3, 31, 0, 0), 10);
        let local: Vec<String> = fires
            .iter()
            .map(|t| t.with_timezone(&s.tz).format("%m-%d %H:%M %Z").to_string())
            .collect();
        assert_eq!(
            local,
            [
                "03-27 02:30 CET",
                "03-28 02:30 CET",
                "03-29 03:00 CEST",
                "03-30 02:30 CEST"
            ]
        );
        // In autumn 02:30 happens twice (2026-10-25): one run.
        let fires = s.fires_between(utc(2026, 10, 24, 12, 0), utc(2026, 10, 26, 12, 0), 10);
        assert_eq!(fires.len(), 2, "{fires:?}");
        assert_eq!(fires[0], utc(2026, 10, 25, 0, 30), "the first 02:30 (CEST)");
    }

    #[test]
    fn the_last_day_of_a_month_and_a_leap_day() {
        let s = Schedule::new("0 6 L * *", "UTC").unwrap();
        let fires = s.fires_between(utc(2028, 1, 1, 0, 0), utc(2028, 5, 1, 0, 0), 10);
        let days: Vec<u32> = fires
            .iter()
            .map(|t| t.format("%d").to_string().parse().unwrap())
            .collect();
        assert_eq!(days, [31, 29, 31, 30]);
        let s = Schedule::new("0 0 29 2 *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2026, 3, 1, 0, 0)),
            Some(utc(2028, 2, 29, 0, 0))
        );
    }

    #[test]
    fn the_logical_date_is_the_date_on_the_schedules_clock() {
        let s = Schedule::new("0 23 * * *", "America/New_York").unwrap();
        let fire = s.next_after(utc(2026, 6, 1, 0, 0)).unwrap();
        // 23:00 in New York on 31 May is 03:00 UTC on 1 June.
        assert_eq!(fire, utc(2026, 6, 1, 3, 0));
        assert_eq!(s.date_of(fire).to_string(), "2026-05-31");
        assert_eq!(s.latest_at_or_before(utc(2026, 6, 2, 2, 59)), Some(fire));
    }
}
