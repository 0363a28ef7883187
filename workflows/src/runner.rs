//! Running one attempt of a job's task: the [`Runner`] seam (tributary's
//! tasks are run by the binary, which knows the lake and the sources), the
//! built-in shell task, and what an attempt's end means for its run.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_util::sync::CancellationToken;

use crate::history::{Finish, state};
use crate::job::{Job, Retry};

/// What a task is run for.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub run_key: String,
    pub logical_time: DateTime<Utc>,
    pub logical_date: Option<NaiveDate>,
    pub attempt: i32,
}

impl RunContext {
    /// The logical date as `YYYY-MM-DD` (`{{ds}}`): the run's date, or the
    /// UTC date of its logical time.
    pub fn ds(&self) -> String {
        self.logical_date
            .unwrap_or_else(|| self.logical_time.date_naive())
            .to_string()
    }

    /// `text` with `{{ds}}` replaced.
    pub fn render(&self, text: &str) -> String {
        text.replace("{{ds}}", &self.ds())
    }
}

/// A task's result: a one-line summary, or an error for a person.
pub type TaskResult = Result<String, String>;
pub type TaskFuture = Pin<Box<dyn Future<Output = TaskResult> + Send>>;

/// Runs tasks. Cancellation: the future is dropped (after a timeout, or
/// when `cancel` fires), so a task must stop what it started on drop.
pub trait Runner: Send + Sync + 'static {
    fn run(&self, job: &Job, ctx: RunContext) -> TaskFuture;
}

/// Runs `command` with `sh -c`; the summary is the last line of its
/// output. The command runs in a process group of its own, killed whole
/// when the future is dropped (a timeout, a cancel), so a command's own
/// children do not outlive its attempt. Where util-linux's `setpriv` is
/// found, the shell also dies with the scheduler (parent-death signal): a
/// SIGKILLed leader leaves no command behind to run beside its
/// successor's retry (a long-running command should `exec` its program,
/// which keeps that signal).
pub fn shell(command: &str, ctx: &RunContext) -> TaskFuture {
    let command = ctx.render(command);
    let ds = ctx.ds();
    let key = ctx.run_key.clone();
    Box::pin(async move {
        let mut cmd = if has_setpriv() {
            let mut c = tokio::process::Command::new("setpriv");
            c.args(["--pdeathsig", "KILL", "--", "sh", "-c"]);
            c
        } else {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c");
            c
        };
        let child = cmd
            .arg(&command)
            .env("TRIBUTARY_DS", ds)
            .env("TRIBUTARY_RUN_KEY", key)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting sh: {e}"))?;
        let mut group = GroupKill(child.id());
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for sh: {e}"))?;
        group.0 = None;
        let last = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .chars()
                .take(500)
                .collect::<String>()
        };
        if out.status.success() {
            Ok(last(&out.stdout))
        } else {
            Err(format!("{}: {}", out.status, last(&out.stderr)))
        }
    })
}

/// Kills a process group when dropped, unless its id was taken out.
struct GroupKill(Option<u32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn has_setpriv() -> bool {
    static FOUND: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FOUND.get_or_init(|| {
        std::process::Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "true"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Succeeded(String),
    Failed(String),
    TimedOut(Duration),
    /// Cancelled on purpose (the concurrency policy `cancel`, a shutdown).
    Cancelled(String),
}

/// Runs one attempt with the job's timeout, until `cancel` fires.
pub async fn attempt(
    runner: &dyn Runner,
    job: &Job,
    ctx: RunContext,
    cancel: CancellationToken,
) -> Outcome {
    let task = runner.run(job, ctx);
    // A continuous job runs until it is stopped: no timeout.
    let timeout = if job.continuous {
        Duration::MAX
    } else {
        job.timeout
    };
    tokio::select! {
        r = tokio::time::timeout(timeout, task) => match r {
            Ok(Ok(summary)) => Outcome::Succeeded(summary),
            Ok(Err(e)) => Outcome::Failed(e),
            Err(_) => Outcome::TimedOut(job.timeout),
        },
        _ = cancel.cancelled() => Outcome::Cancelled("cancelled".into()),
    }
}

/// What the end of attempt `attempt` means for its run: retried after a
/// backoff while attempts remain, else done. `unit` in [0, 1) picks the
/// jitter.
pub fn conclude(
    retry: &Retry,
    attempt: i32,
    outcome: &Outcome,
    now: DateTime<Utc>,
    unit: f64,
) -> Finish {
    let failed = |attempt_state: &'static str, error: String| {
        if (attempt as u32) < retry.attempts {
            let delay = retry.delay(attempt as u32 + 1, unit);
            Finish {
                attempt_state,
                run_state: state::RETRYING,
                error: Some(error),
                summary: None,
                next_attempt_at: Some(now + chrono::Duration::from_std(delay).unwrap_or_default()),
                at: now,
            }
        } else {
            Finish {
                attempt_state,
                run_state: state::FAILED,
                error: Some(error),
                summary: None,
                next_attempt_at: None,
                at: now,
            }
        }
    };
    match outcome {
        Outcome::Succeeded(s) => Finish {
            attempt_state: "succeeded",
            run_state: state::SUCCEEDED,
            error: None,
            summary: Some(s.clone()),
            next_attempt_at: None,
            at: now,
        },
        Outcome::Failed(e) => failed("failed", e.clone()),
        Outcome::TimedOut(d) => failed("timed_out", format!("timed out after {}s", d.as_secs())),
        Outcome::Cancelled(why) => Finish {
            attempt_state: "cancelled",
            run_state: state::CANCELLED,
            error: Some(why.clone()),
            summary: None,
            next_attempt_at: None,
            at: now,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    struct Shell;
    impl Runner for Shell {
        fn run(&self, job: &Job, ctx: RunContext) -> TaskFuture {
            match &job.task {
                crate::job::Task::Shell { command } => shell(command, &ctx),
                other => panic!("not a shell task: {other:?}"),
            }
        }
    }

    fn job(text: &str) -> Job {
        Job::parse(Path::new("jobs/t.toml"), text).unwrap()
    }

    fn ctx() -> RunContext {
        RunContext {
            run_key: "t@x".into(),
            logical_time: DateTime::parse_from_rfc3339("2026-12-01T05:00:00Z")
                .unwrap()
                .to_utc(),
            logical_date: None,
            attempt: 1,
        }
    }

    #[tokio::test]
    async fn a_shell_task_sees_its_date_and_reports_its_last_line() {
        let j =
            job("[task]\nkind = \"shell\"\ncommand = \"echo one; echo {{ds}} $TRIBUTARY_DS\"\n");
        let out = attempt(&Shell, &j, ctx(), CancellationToken::new()).await;
        assert_eq!(out, Outcome::Succeeded("2026-12-01 2026-12-01".into()));
        let j = job("[task]\nkind = \"shell\"\ncommand = \"echo broken >&2; exit 3\"\n");
        let out = attempt(&Shell, &j, ctx(), CancellationToken::new()).await;
        assert!(
            matches!(&out, Outcome::Failed(e) if e.contains("broken") && e.contains('3')),
            "{out:?}"
        );
    }

    #[tokio::test]
    async fn a_task_over_its_timeout_is_stopped() {
        let j = job("timeout = \"1s\"\n[task]\nkind = \"shell\"\ncommand = \"sleep 30\"\n");
        let started = std::time::Instant::now();
        let out = attempt(&Shell, &j, ctx(), CancellationToken::new()).await;
        assert_eq!(out, Outcome::TimedOut(Duration::from_secs(1)));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn failures_retry_with_backoff_until_the_attempts_run_out() {
        let retry = Retry {
            attempts: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            jitter: 0.0,
        };
        let now = ctx().logical_time;
        let f = conclude(&retry, 1, &Outcome::Failed("x".into()), now, 0.5);
        assert_eq!(f.run_state, state::RETRYING);
        assert_eq!(f.next_attempt_at, Some(now + chrono::Duration::seconds(10)));
        let f = conclude(
            &retry,
            2,
            &Outcome::TimedOut(Duration::from_secs(5)),
            now,
            0.5,
        );
        assert_eq!(
            (f.run_state, f.attempt_state),
            (state::RETRYING, "timed_out")
        );
        assert_eq!(f.next_attempt_at, Some(now + chrono::Duration::seconds(20)));
        let f = conclude(&retry, 3, &Outcome::Failed("x".into()), now, 0.5);
        assert_eq!(f.run_state, state::FAILED);
        let f = conclude(&retry, 1, &Outcome::Succeeded("ok".into()), now, 0.5);
        assert_eq!(f.run_state, state::SUCCEEDED);
    }
}
