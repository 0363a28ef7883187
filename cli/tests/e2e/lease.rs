//! Single writer per Delta table: commits claimed in PostgreSQL, leases
//! with fences, and ingesters that take over from each other. Real
//! PostgreSQL, the tansu broker, Delta tables and the `tributary` binary.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::protocol::SaveMode;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tributary_lake::coordinator::{ClaimError, Coordinator, Fence};
use tributary_lake::{Lake, LakeConfig};

use crate::common::*;

fn coordinator_dsn(env: &Env) -> String {
    env.lake_config()
        .coordinator_dsn
        .expect("the local stack gives the lake a coordinator")
}

fn pid_of(env: &Env, name: &str) -> Pid {
    Pid::from_raw(env.pid(name) as i32)
}

/// Owner of every ingest lease, when one process holds them all.
async fn sole_owner(client: &tokio_postgres::Client) -> Option<String> {
    let rows = client
        .query(
            "SELECT DISTINCT owner FROM tributary_lake.leases WHERE expires_at > now()",
            &[],
        )
        .await
        .ok()?;
    let n: i64 = client
        .query_one("SELECT count(*) FROM tributary_lake.leases", &[])
        .await
        .ok()?
        .get(0);
    (rows.len() == 1 && n == tributary_model::domain::TABLES.len() as i64).then(|| rows[0].get(0))
}

async fn wait_owner_change(
    env: &mut Env,
    client: &tokio_postgres::Client,
    from: &str,
    limit: Duration,
) -> (String, Duration) {
    let started = Instant::now();
    loop {
        if let Some(o) = sole_owner(client).await
            && o != from
        {
            return (o, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "no other ingester took every table over within {limit:?}\n--- a:\n{}\n--- b:\n{}",
            tail(&env.log("ingest-a")),
            tail(&env.log("ingest-b"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every commit was claimed once, by the lease holder of its epoch; epochs
/// never go back; and every claimed version is in the table's log.
async fn assert_one_writer_per_epoch(client: &tokio_postgres::Client, s3: Option<&S3Server>) {
    let rows = client
        .query(
            "SELECT table_url, version, writer, epoch, completed_at IS NOT NULL FROM tributary_lake.commits
              WHERE epoch IS NOT NULL ORDER BY table_url, version",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty(), "no fenced commit was claimed at all");
    let mut writers_by_epoch = std::collections::HashMap::new();
    let mut last: Option<(String, i64)> = None;
    let mut epochs_seen = std::collections::BTreeSet::new();
    for r in &rows {
        let (url, version, writer, epoch, done): (String, i64, String, i64, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        assert!(
            done,
            "{url} version {version} was claimed but never written"
        );
        let prev = writers_by_epoch.insert((url.clone(), epoch), writer.clone());
        assert!(
            prev.is_none_or(|p| p == writer),
            "{url}: two writers committed under epoch {epoch}"
        );
        if let Some((u, e)) = &last
            && *u == url
        {
            assert!(
                epoch >= *e,
                "{url} version {version}: epoch {epoch} committed after epoch {e} (an old owner committed after losing its lease)"
            );
        }
        last = Some((url.clone(), epoch));
        epochs_seen.insert(epoch);
        let u = url::Url::parse(&url).unwrap();
        let dir = match s3 {
            // s3s-fs keeps each object as a file under its bucket's folder.
            Some(s3) => s3.bucket_dir().join(u.path().trim_start_matches('/')),
            None => u.to_file_path().unwrap(),
        };
        let path = dir.join(format!("_delta_log/{version:020}.json"));
        assert!(
            path.exists(),
            "claimed commit {} is missing",
            path.display()
        );
    }
    assert!(
        epochs_seen.len() >= 2,
        "the test never changed owners: {epochs_seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingesters_never_both_commit_and_a_lost_owner_is_replaced_in_seconds() {
    takeovers(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_two_ingesters_never_both_commit_and_a_lost_owner_is_replaced_in_seconds() {
    let s3 = S3Server::start().await;
    takeovers(Some(&s3)).await;
}

/// Two ingesters on one lake: the owner is paused past its lease, then the
/// new owner is killed; each time the other takes over within seconds, and
/// no commit is refused, lost or made under a lost lease.
async fn takeovers(s3: Option<&S3Server>) {
    let mut env = Env::stack().await;
    if let Some(s3) = s3 {
        env.extra = s3.lake_vars("lake");
    }
    env.extra
        .push(("TRIBUTARY__INGEST__LEASE_TTL_MS".into(), "3000".into()));
    env.start().await;
    env.spawn("cdc", &["cdc", "run"]);
    env.spawn("ingest-a", &["lake", "ingest"]);
    let client = pipeline_connect(&coordinator_dsn(&env)).await;
    let started = Instant::now();
    let a = loop {
        if let Some(o) = sole_owner(&client).await {
            break o;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first ingester never owned every table:\n{}",
            tail(&env.log("ingest-a"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    env.spawn("ingest-b", &["lake", "ingest"]);
    let mut load = env.spawn_load(40, 30, 5);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // b is a standby: a keeps every table.
    assert_eq!(sole_owner(&client).await.as_deref(), Some(a.as_str()));

    // Pause the owner past its lease: b takes over; a, resumed, must not
    // commit again under its old lease.
    kill(pid_of(&env, "ingest-a"), Signal::SIGSTOP).unwrap();
    let (b, took) = wait_owner_change(&mut env, &client, &a, Duration::from_secs(20)).await;
    println!("paused owner replaced after {took:?}");
    assert!(
        took < Duration::from_secs(8),
        "takeover took {took:?} with a 3 s lease"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    kill(pid_of(&env, "ingest-a"), Signal::SIGCONT).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sole_owner(&client).await.as_deref(),
        Some(b.as_str()),
        "the resumed old owner took tables back from a live owner"
    );

    // Kill the new owner: the old one takes every table back.
    env.kill9("ingest-b");
    let (again, took) = wait_owner_change(&mut env, &client, &b, Duration::from_secs(20)).await;
    println!("killed owner replaced after {took:?}");
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    assert_ne!(again, b);

    assert!(load.wait().unwrap().success(), "load failed");
    env.assert_running();
    assert_lake_equals_source(&env).await;
    assert_one_writer_per_epoch(&client, s3).await;
    assert!(
        env.log("ingest-a").contains("lease lost"),
        "the paused owner never noticed it lost its leases:\n{}",
        tail(&env.log("ingest-a"))
    );
}

fn numbers(values: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_admit_one_writer_per_version_and_refuse_a_fenced_one() {
    let env = Env::stack().await;
    env.up();
    let dsn = coordinator_dsn(&env);
    let c = Coordinator::connect(&dsn).await.unwrap();

    // Twenty writers race for one version: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.claim("test://race", 0, &format!("tmp{i}"), &format!("w{i}"), None)
                .await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(ClaimError::Taken(0)) => {}
            Err(e) => panic!("unexpected claim error: {e}"),
        }
    }
    assert_eq!(won, 1, "{won} writers claimed the same version");
    // A stale writer cannot claim a version at or below the newest claim.
    assert!(matches!(
        c.claim("test://race", 0, "late", "w", None).await,
        Err(ClaimError::Taken(0))
    ));

    // Leases: a second owner waits; after expiry it takes over with a
    // higher epoch and the old owner's commits are refused.
    let ttl = Duration::from_millis(800);
    let fence = |owner: &str, epoch| Fence {
        resource: "test://lease".into(),
        owner: owner.into(),
        epoch,
    };
    let ea = c
        .try_acquire("test://lease", "a", ttl)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.try_acquire("test://lease", "b", ttl).await.unwrap(), None);
    let fa = fence("a", ea);
    c.claim("test://fenced", 0, "t0", "a", Some(&fa))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let eb = c
        .try_acquire("test://lease", "b", ttl)
        .await
        .unwrap()
        .unwrap();
    assert!(eb > ea);
    assert!(
        !c.renew(&fa, ttl).await.unwrap(),
        "an expired lease renewed"
    );
    match c.claim("test://fenced", 1, "t1", "a", Some(&fa)).await {
        Err(ClaimError::Fenced(f)) => assert_eq!(f.epoch, ea),
        other => panic!("the old owner's commit was not fenced: {other:?}"),
    }
    let fb = fence("b", eb);
    c.claim("test://fenced", 1, "t1", "b", Some(&fb))
        .await
        .unwrap();
    c.release(&fb).await.unwrap();
    assert!(
        c.try_acquire("test://lease", "a", ttl)
            .await
            .unwrap()
            .is_some(),
        "a released lease was not free at once"
    );

    // Delta writers on two handles commit concurrently through the
    // coordinator: every commit lands, none is overwritten.
    let root = env.dir.path().join("claims-lake").display().to_string();
    let (version, rows) = race_writers(&LakeConfig {
        root,
        s3: None,
        coordinator_dsn: Some(dsn.clone()),
    })
    .await;
    assert_eq!((version, rows), (30, 30), "commits were lost or doubled");
}

/// Two writers append 15 commits each to one new table; returns the
/// table's final version and its distinct rows.
async fn race_writers(config: &LakeConfig) -> (i64, i64) {
    let lake = Lake::new(config).unwrap();
    lake.table_handle("silver", "numbers")
        .await
        .unwrap()
        .write(vec![numbers(&[])])
        .with_save_mode(SaveMode::Append)
        .await
        .unwrap();
    let mut writers = Vec::new();
    for w in 0..2i64 {
        let lake = Lake::new(config).unwrap();
        writers.push(tokio::spawn(async move {
            // Bounded: a store that loses commits can leave a table no
            // writer gets past, and the race must end either way.
            for i in 0..15i64 {
                for attempt in 1..=20 {
                    let Ok(Some(t)) = lake.open("silver", "numbers").await else {
                        continue;
                    };
                    match t
                        .write(vec![numbers(&[w * 100 + i])])
                        .with_save_mode(SaveMode::Append)
                        .await
                    {
                        Ok(_) => break,
                        Err(e) => eprintln!("writer {w} attempt {attempt} failed: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    // A table whose commits were overwritten may not read at all: -1.
    let version = match lake.open("silver", "numbers").await {
        Ok(Some(t)) => t.version().map_or(-1, |v| v as i64),
        other => {
            eprintln!("the raced table does not open: {:?}", other.err());
            -1
        }
    };
    let rows = match tributary_query::Session::new(lake).await {
        Ok(session) => match session
            .sql("SELECT count(DISTINCT n) FROM silver.numbers")
            .await
        {
            Ok(batches) => tributary_query_count(&batches),
            Err(e) => {
                eprintln!("the raced table does not read: {e}");
                -1
            }
        },
        Err(e) => {
            eprintln!("no session over the raced lake: {e}");
            -1
        }
    };
    (version, rows)
}

fn s3_lake(s3: &S3Server, prefix: &str, coordinator_dsn: Option<String>) -> LakeConfig {
    LakeConfig {
        root: format!("s3://{}/{prefix}", s3.bucket),
        s3: Some(
            serde_json::from_value(serde_json::json!({
                "endpoint": s3.endpoint(),
                "access_key_id": S3Server::ACCESS_KEY,
                "secret_access_key": S3Server::SECRET_KEY,
                "allow_http": true,
                "trust_put_if_absent": coordinator_dsn.is_none(),
            }))
            .unwrap(),
        ),
        coordinator_dsn,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_concurrent_writers_lose_no_commit_through_the_coordinator() {
    let s3 = S3Server::start().await;
    let env = Env::stack().await;
    env.up();
    let dsn = coordinator_dsn(&env);
    let (version, rows) = race_writers(&s3_lake(&s3, "coordinated", Some(dsn))).await;
    assert_eq!(
        (version, rows),
        (30, 30),
        "commits were lost or doubled on S3 with the coordinator"
    );
    // The same race trusting the store, to show what the coordinator is for:
    // s3s-fs lets concurrent creators of one log entry all "win", and the
    // later one overwrites the earlier commit.
    let (version, rows) = race_writers(&s3_lake(&s3, "trusting", None)).await;
    println!(
        "without the coordinator on s3s-fs: version {version}, {rows} of 30 committed rows readable (-1: the table no longer reads)"
    );
}

/// Waits until the process `name` exits and forgets it; fails when it
/// still runs after `limit` (a retry loop that never gives up).
async fn wait_exit(env: &mut Env, name: &str, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        let (_, child) = env.children.iter_mut().find(|(n, _)| n == name).unwrap();
        if let Some(status) = child.try_wait().unwrap() {
            env.children.retain(|(n, _)| n != name);
            return status;
        }
        assert!(
            started.elapsed() < limit,
            "{name} still runs after {limit:?}: an error no retry cures is retried\n{}",
            tail(&env.log(name))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A coordinator role that lacks a privilege is refused for good, not
/// retried: the ingester exits with an error that names the SQLSTATE and
/// the fix, whether the role lacks it from the start or loses it while it
/// holds every lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_role_without_privileges_stops_the_ingester_with_a_clear_error() {
    let mut env = Env::stack().await;
    env.up();
    let admin_dsn = coordinator_dsn(&env);
    let admin = pipeline_connect(&admin_dsn).await;
    for sql in [
        "CREATE ROLE lake_owner LOGIN",
        "CREATE ROLE lake_nobody LOGIN",
        "CREATE DATABASE lake_coord OWNER lake_owner",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    // Later keys of a key-value DSN win.
    let dsn_as = |user: &str| format!("{admin_dsn} user={user} dbname=lake_coord");
    let lake_root = env.state_dir().join("lake").display().to_string();
    env.extra = vec![
        ("TRIBUTARY__LAKE__ROOT".into(), lake_root),
        ("TRIBUTARY__INGEST__LEASE_TTL_MS".into(), "3000".into()),
    ];
    let refused = |log: &str| {
        log.contains("SQLSTATE 42501")
            && log.contains("a retry cannot cure this, so none is made")
            && log.contains("lake.coordinator_dsn")
    };

    // A role that may not even create the coordinator's schema.
    env.extra.push((
        "TRIBUTARY__LAKE__COORDINATOR_DSN".into(),
        dsn_as("lake_nobody"),
    ));
    env.spawn("ingest-nobody", &["lake", "ingest"]);
    let status = wait_exit(&mut env, "ingest-nobody", Duration::from_secs(60)).await;
    let log = env.log("ingest-nobody");
    assert!(!status.success(), "{log}");
    assert!(
        refused(&log),
        "the error does not say what is wrong:\n{log}"
    );

    // A role that owns the coordinator's database, until its privilege on
    // the leases is revoked while it holds them all.
    env.extra.pop();
    env.extra.push((
        "TRIBUTARY__LAKE__COORDINATOR_DSN".into(),
        dsn_as("lake_owner"),
    ));
    env.spawn("ingest-owner", &["lake", "ingest"]);
    let coord = pipeline_connect(&format!("{admin_dsn} dbname=lake_coord")).await;
    let started = Instant::now();
    while sole_owner(&coord).await.is_none() {
        env.assert_running();
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the ingester never owned every table:\n{}",
            tail(&env.log("ingest-owner"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    coord
        .batch_execute("REVOKE UPDATE ON tributary_lake.leases FROM lake_owner")
        .await
        .unwrap();
    // Renewals run every second with a 3 s lease: a bounded wait, not a
    // retry loop, ends this.
    let status = wait_exit(&mut env, "ingest-owner", Duration::from_secs(30)).await;
    let log = env.log("ingest-owner");
    assert!(!status.success(), "{log}");
    assert!(
        refused(&log) && log.contains("renewing a lease"),
        "the error does not say what is wrong:\n{log}"
    );
}
