//! The workflows scheduler on a real catalog database: schedules, retries,
//! a downstream job, a refused job file, and leadership — the leader
//! killed with SIGKILL (a standby takes over within 10 s, no fire time
//! lost or run twice) and a leader paused with SIGSTOP past its lease (it
//! records nothing once resumed).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::*;

const TICK: &str = r#"
description = "every two seconds"
schedule = "*/2 * * * * *"
catchup = "all"
concurrency = "queue"
timeout = "30s"
[task]
kind = "shell"
command = "sleep 0.3; echo tick {{ds}}"
"#;

const AFTER: &str = r#"
depends_on = ["tick"]
[task]
kind = "shell"
command = "echo after $TRIBUTARY_RUN_KEY"
"#;

// Fails its first attempt (no marker yet), succeeds on the retry.
// Dated runs for a backfill: each appends its date.
const DATED: &str = r#"
partitioned = true
[task]
kind = "shell"
command = "echo {{ds}} >> dated.txt"
"#;

// A slow dated job, for a backfill with parallelism.
const SLOW: &str = r#"
partitioned = true
concurrency = "skip"
[task]
kind = "shell"
command = "sleep 2; echo {{ds}}"
"#;

// Kept running by whichever scheduler leads; each start records its pid.
const FOLLOW: &str = r#"
continuous = true
[task]
kind = "shell"
command = "echo $$ >> follow.pids; exec sleep 600"
[retry]
backoff = "1s"
"#;

const FLAKY: &str = r#"
[task]
kind = "shell"
command = "if [ -f flaky.marker ]; then echo recovered; else touch flaky.marker; echo first try fails >&2; exit 1; fi"
[retry]
attempts = 3
backoff = "1s"
max_backoff = "2s"
jitter = 0.1
"#;

async fn catalog(env: &Env) -> tokio_postgres::Client {
    let dsn = env
        .platform()
        .lake_config()
        .coordinator_dsn
        .clone()
        .unwrap();
    pipeline_connect(&dsn).await
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

fn scheduler(env: &mut Env, name: &str, jobs: &str) {
    env.spawn(
        name,
        &["workflows", "--jobs", jobs, "run", "--tick", "200ms"],
    );
}

async fn leader_epoch(c: &tokio_postgres::Client) -> (String, i64) {
    let r = c
        .query_one(
            "SELECT owner, epoch FROM tributary_lake.leases WHERE resource = 'workflows/scheduler'",
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

#[tokio::test]
async fn schedulers_take_over_without_losing_or_doubling_a_run() {
    let mut env = Env::stack().await;
    env.start().await;
    let jobs = env.dir.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("tick.toml"), TICK).unwrap();
    std::fs::write(jobs.join("after.toml"), AFTER).unwrap();
    std::fs::write(jobs.join("flaky.toml"), FLAKY).unwrap();
    std::fs::write(jobs.join("dated.toml"), DATED).unwrap();
    std::fs::write(jobs.join("slow.toml"), SLOW).unwrap();
    std::fs::write(jobs.join("follow.toml"), FOLLOW).unwrap();
    std::fs::write(
        jobs.join("broken.toml"),
        "schedule = \"every day\"\n[task]\nkind = \"shell\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let jobs_arg = jobs.display().to_string();

    // `list` names the refused file and fails; `graph` shows the rest.
    let out = env.run(&["workflows", "--jobs", &jobs_arg, "list"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("REFUSED") && text.contains("broken.toml") && text.contains("`schedule`"),
        "{text}"
    );
    let graph = env.run_ok(&["workflows", "--jobs", &jobs_arg, "graph"]);
    assert!(graph.contains("after tick"), "{graph}");

    scheduler(&mut env, "sched-a", &jobs_arg);
    env.until("scheduler a leads", 30, async |env: &Env| {
        env.log("sched-a").contains("took the lead")
    })
    .await;
    scheduler(&mut env, "sched-b", &jobs_arg);
    assert!(
        env.log("sched-a").contains("broken.toml"),
        "the refused file is logged"
    );
    let c = catalog(&env).await;

    // A retry after a failure; the downstream job after its upstream.
    env.run_ok(&["workflows", "--jobs", &jobs_arg, "trigger", "flaky"]);
    env.until("flaky succeeded on its second attempt", 30, async |_env: &Env| {
        count(&c, "SELECT count(*) FROM tributary_workflows.runs WHERE job = 'flaky' AND state = 'succeeded' AND attempts = 2").await == 1
    })
    .await;
    env.until("ticks and their downstream runs", 30, async |_env: &Env| {
        count(&c, "SELECT count(*) FROM tributary_workflows.runs WHERE job = 'after' AND state = 'succeeded'").await >= 3
    })
    .await;
    let (owner_a, epoch_a) = leader_epoch(&c).await;
    assert!(
        !env.log("sched-b").contains("took the lead"),
        "one leader at a time"
    );

    // SIGKILL the leader: b takes over within 10 s.
    let killed = Instant::now();
    env.kill9("sched-a");
    env.until("scheduler b leads", 15, async |env: &Env| {
        env.log("sched-b").contains("took the lead")
    })
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    let (owner_b, epoch_b) = leader_epoch(&c).await;
    assert_ne!(owner_b, owner_a);
    assert!(epoch_b > epoch_a);
    env.until("ticks under b", 20, async |_env: &Env| {
        count(&c, &format!("SELECT count(*) FROM tributary_workflows.runs WHERE job = 'tick' AND epoch = {epoch_b} AND state = 'succeeded'")).await >= 3
    })
    .await;

    // SIGSTOP b past its lease: c takes over; b, resumed, records nothing more.
    scheduler(&mut env, "sched-c", &jobs_arg);
    let pid_b = Pid::from_raw(env.pid("sched-b") as i32);
    kill(pid_b, Signal::SIGSTOP).unwrap();
    env.until("scheduler c leads", 20, async |env: &Env| {
        env.log("sched-c").contains("took the lead")
    })
    .await;
    let (_, epoch_c) = leader_epoch(&c).await;
    let took_over: DateTime<Utc> = Utc::now();
    kill(pid_b, Signal::SIGCONT).unwrap();
    env.until("b notices it lost the lead", 20, async |env: &Env| {
        env.log("sched-b").contains("lost the lead")
    })
    .await;
    env.until("ticks under c", 20, async |_env: &Env| {
        count(&c, &format!("SELECT count(*) FROM tributary_workflows.runs WHERE job = 'tick' AND epoch = {epoch_c} AND state = 'succeeded'")).await >= 3
    })
    .await;
    let late: i64 = c
        .query_one(
            "SELECT count(*) FROM tributary_workflows.attempts WHERE epoch = $1 AND started_at > $2",
            &[&epoch_b, &took_over],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        late, 0,
        "the paused leader started nothing after the takeover"
    );

    // Every fire time of `tick` from the first to the last has exactly one
    // run: none lost across two takeovers (catch-up `all`), none doubled.
    let rows = c
        .query(
            "SELECT logical_time FROM tributary_workflows.runs WHERE job = 'tick' ORDER BY logical_time",
            &[],
        )
        .await
        .unwrap();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|r| r.get(0)).collect();
    let distinct: BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "no fire time twice");
    for w in times.windows(2) {
        assert_eq!(
            (w[1] - w[0]).num_seconds(),
            2,
            "a fire time missing between {} and {}",
            w[0],
            w[1]
        );
    }
    let doubled = count(
        &c,
        "SELECT count(*) FROM (SELECT run_id FROM tributary_workflows.attempts WHERE state = 'succeeded' GROUP BY run_id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(doubled, 0, "no run succeeded twice");
    let history = env.run_ok(&["workflows", "--jobs", &jobs_arg, "history", "flaky"]);
    assert!(
        history.contains("attempt 1 failed") && history.contains("first try fails"),
        "{history}"
    );

    // A backfill runs one run per date, in date order.
    let out = env.run_ok(&[
        "workflows",
        "--jobs",
        &jobs_arg,
        "backfill",
        "dated",
        "--from",
        "2026-02-27",
        "--to",
        "2026-03-02",
    ]);
    assert_eq!(out.matches("succeeded").count(), 4, "{out}");
    let dated = std::fs::read_to_string(env.dir.path().join("dated.txt")).unwrap();
    assert_eq!(dated, "2026-02-27\n2026-02-28\n2026-03-01\n2026-03-02\n");
    // Two at a time: four 2 s runs overlap in pairs, none skipped.
    let out = env.run_ok(&[
        "workflows",
        "--jobs",
        &jobs_arg,
        "backfill",
        "slow",
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-04",
        "--parallel",
        "2",
    ]);
    assert_eq!(out.matches("succeeded").count(), 4, "{out}");
    // Most at once is reached at some run's start: count the runs running
    // at each start (not those overlapping a run's whole span, which
    // counts the pair before it and the pair after it).
    let most = count(
        &c,
        "SELECT max(n) FROM (SELECT (SELECT count(*) FROM tributary_workflows.runs o \
           WHERE o.job = 'slow' AND o.started_at <= r.started_at AND o.ended_at > r.started_at) AS n \
           FROM tributary_workflows.runs r WHERE r.job = 'slow') x",
    )
    .await;
    assert_eq!(most, 2, "at most two at once, and two did run together");

    // The timeline shows flaky's failure, backoff and success.
    let svg = env.dir.path().join("runs.svg");
    let svg_arg = svg.display().to_string();
    let chart = env.run_ok(&[
        "workflows",
        "--jobs",
        &jobs_arg,
        "timeline",
        "flaky",
        "--svg",
        &svg_arg,
    ]);
    let row = chart
        .lines()
        .find(|l| l.starts_with("flaky@"))
        .unwrap_or_else(|| panic!("{chart}"));
    assert!(row.contains('x') && row.contains('#'), "{chart}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("Failed"));

    // The history is a table of the SQL console.
    let out = env.run_ok(&[
        "sql",
        "-e",
        "SELECT job, attempts, state FROM workflows.runs WHERE job = 'flaky'",
        "--format",
        "csv",
    ]);
    assert!(out.contains("flaky,2,succeeded"), "{out}");
    let out = env.run_ok(&[
        "sql",
        "-e",
        "SELECT count(*) AS n FROM workflows.attempts a JOIN workflows.runs r ON r.id = a.run_id \
         WHERE r.job = 'flaky' AND a.state = 'failed'",
        "--format",
        "csv",
    ]);
    assert_eq!(out.lines().nth(1), Some("1"), "{out}");

    // The continuous job: one run carried across the three leaders, one
    // attempt each, and only the newest leader's command alive (the
    // SIGKILLed leader's died with it, the paused one's was stopped when
    // it noticed the takeover).
    let pids = || -> Vec<i32> {
        std::fs::read_to_string(env.dir.path().join("follow.pids"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    };
    let alive = |pid: i32| kill(Pid::from_raw(pid), None).is_ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = pids();
        let living: Vec<i32> = p.iter().copied().filter(|p| alive(*p)).collect();
        if p.len() == 3 && living == [p[2]] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "continuous job starts {p:?}, alive {living:?}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = c
        .query_one(
            "SELECT count(*), max(attempts), max(state) FROM tributary_workflows.runs WHERE job = 'follow'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.get::<_, i64>(0),
            r.get::<_, i32>(1),
            r.get::<_, String>(2)
        ),
        (1, 3, "running".to_string()),
        "one run of the continuous job, taken over twice"
    );

    // `up` with a job folder starts a scheduler (a standby here, c leads);
    // `status` shows it; a second `up` leaves it; `down` stops it gracefully.
    let up = |env: &Env| {
        let out = env
            .command(&["up"])
            .env("TRIBUTARY__STACK__JOBS", &jobs_arg)
            .output()
            .unwrap();
        assert_success(&out, "tributary up");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = up(&env);
    assert!(first.contains("scheduler started (pid"), "{first}");
    let again = up(&env);
    assert!(again.contains("scheduler already runs"), "{again}");
    let status = env.run_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("workflows scheduler"))
        .unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains("pid") && line.contains("leader"), "{line}");
    let dir = tributary_stack::scheduler_dir(&env.config());
    let pid = tributary_stack::daemon::alive(&dir).expect("the scheduler runs");
    tributary_stack::daemon::stop(&dir, Duration::from_secs(10));
    assert!(!alive(pid as i32));
    let log = std::fs::read_to_string(dir.join("scheduler.log")).unwrap();
    assert!(log.contains("scheduler stopped"), "{log}");
    env.assert_running();
}
