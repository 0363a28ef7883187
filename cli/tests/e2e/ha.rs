//! High availability on real clusters: a standby per shard, a frozen
//! primary failed over by the supervisor under load and fenced, a planned
//! `tributary failover shard N`, the CDC reader re-snapshotting the shard
//! on its new primary, and the lake equal to the source afterwards.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tributary_stack::PgInstance;
use tributary_stack::ha::{NodeRole, probe, replica};

use crate::common::*;

/// Waits until the shard's standby streams synchronously again.
async fn wait_standby_sync(env: &mut Env, index: usize) {
    env.until(
        "the standby to stream synchronously",
        60,
        async |env: &Env| {
            let shard: PgInstance = env.stack_state().shards[index].clone();
            replica(&shard)
                .await
                .is_some_and(|r| r.state == "streaming" && r.sync_state == "sync")
        },
    )
    .await;
}

async fn orders(shard: &PgInstance) -> i64 {
    let c = pipeline_connect(&shard.dsn()).await;
    scalar(&c, "SELECT count(*) FROM orders").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_fenced_and_failed_over_and_the_lake_follows() {
    let mut env = Env::stack().await;
    env.extra = vec![
        ("TRIBUTARY__STACK__STANDBYS".into(), "true".into()),
        ("TRIBUTARY__STACK__FAILOVER_AFTER_MS".into(), "2000".into()),
        // An exporter per node: the metrics must follow the failover.
        ("TRIBUTARY__OBSERVE__ENABLED".into(), "true".into()),
    ];
    env.start().await;
    let before = env.stack_state();
    let shard0 = before.shards[0].clone();
    let old = shard0.primary();
    let standby = shard0.standby.clone().expect("a standby per shard");
    assert_eq!(probe(&old).await, NodeRole::Primary);
    assert_eq!(probe(&standby).await, NodeRole::Standby);
    wait_standby_sync(&mut env, 0).await;
    let status = env.run_ok(&["status"]);
    assert!(
        status.contains("postgres shard0 standby") && status.contains("streaming sync"),
        "{status}"
    );
    assert!(status.contains("ha supervisor"), "{status}");

    env.start_pipeline();
    let mut load = env.spawn_load(40, 30, 11);
    tokio::time::sleep(Duration::from_secs(6)).await;

    // Frozen, not dead: the postmaster stops answering, its backends (and
    // walsenders) run on. Only fencing stops them.
    let frozen = tributary_stack::ha::postmaster_pid(&old.data_dir).unwrap();
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).unwrap();
    let t0 = Instant::now();
    env.until(
        "the supervisor to fail shard0 over",
        30,
        async |env: &Env| env.stack_state().shards[0].port == standby.port,
    )
    .await;
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "failover took {took:?} with failover_after_ms = 2000"
    );
    assert_eq!(probe(&standby).await, NodeRole::Primary, "promoted");
    // Fenced: the frozen postmaster is gone, and the old node never
    // answers as a primary again (it comes back as the new standby).
    assert!(
        !std::path::Path::new(&format!("/proc/{frozen}")).exists()
            || std::fs::read_to_string(format!("/proc/{frozen}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "the frozen postmaster {frozen} was not killed"
    );
    wait_standby_sync(&mut env, 0).await;
    assert_eq!(
        probe(&old).await,
        NodeRole::Standby,
        "the old primary rejoined as a standby"
    );
    // Prometheus sees it through the same exporters: the promoted node
    // reports itself primary and its standby streaming.
    let prom = tributary_stack::observe::ObserveState::load(&env.state_dir())
        .unwrap()
        .expect("observed")
        .prometheus_url();
    let (new_node, old_node) = (standby.name(), old.name());
    env.until(
        "Prometheus to see shard0's new primary and its standby streaming",
        60,
        async |_: &Env| {
            let labels = |v: Vec<serde_json::Value>| -> Vec<String> {
                v.iter()
                    .filter_map(|s| s["metric"]["node"].as_str().map(str::to_string))
                    .collect()
            };
            let primary = labels(
                crate::e2e::observe::query(
                    &prom,
                    r#"tributary_node_primary{cluster="shard0"} == 1"#,
                )
                .await,
            );
            let standby = labels(
                crate::e2e::observe::query(
                    &prom,
                    r#"tributary_node_primary{cluster="shard0"} == 0"#,
                )
                .await,
            );
            let streaming = labels(
                crate::e2e::observe::query(
                    &prom,
                    r#"tributary_replication_connected{cluster="shard0",state="streaming"}"#,
                )
                .await,
            );
            primary == [new_node.clone()]
                && standby == [old_node.clone()]
                && streaming == [new_node.clone()]
        },
    )
    .await;
    let refused = pipeline_connect(&old.dsn_of("orders"))
        .await
        .batch_execute("CREATE TABLE fenced_write(x int)")
        .await
        .expect_err("the old primary refuses writes");
    let why = refused.as_db_error().map(|e| e.message().to_string());
    assert!(
        why.as_deref().is_some_and(|m| m.contains("read-only")),
        "{refused:?}"
    );

    // A planned failover of shard 1 under the same load, with the reader
    // dead meanwhile: started after the promotion, it cannot remember how
    // far it streamed from the old primary and reads that from Kafka.
    let shard1 = env.stack_state().shards[1].clone();
    wait_standby_sync(&mut env, 1).await;
    env.kill9("cdc");
    let out = env.run_ok(&["failover", "shard", "1"]);
    env.spawn("cdc-restarted", &["cdc", "run"]);
    assert!(out.contains("is the primary now"), "{out}");
    let after = env.stack_state().shards[1].clone();
    assert_eq!(after.port, shard1.standby.as_ref().unwrap().port, "{out}");
    assert_eq!(probe(&after.primary()).await, NodeRole::Primary);
    assert_eq!(
        probe(after.standby.as_ref().unwrap()).await,
        NodeRole::Standby,
        "{out}"
    );

    // Requests fail while a shard has no primary (the order service
    // answers 503); what it acknowledged is checked through the lake below.
    let _ = load.wait();
    let (cdc, restarted) = (env.log("cdc"), env.log("cdc-restarted"));
    assert!(
        cdc.contains("REPLICATION SLOT LOST") && restarted.contains("REPLICATION SLOT LOST"),
        "the reader re-snapshots each failed-over shard:\n{}\n--- restarted:\n{}",
        tail(&cdc),
        tail(&restarted)
    );
    assert!(
        restarted.contains("read the newest published position of this shard from Kafka"),
        "{}",
        tail(&restarted)
    );
    assert!(orders(&env.stack_state().shards[0]).await > 0);
    assert_lake_equals_source(&env).await;
    // What it reads from Kafka is at least the newest position in the lake.
    let session = env.session().await;
    for shard in 0..env.config().stack.shards as u32 {
        let source = tributary_cdc::SourceDb {
            db: "orders".into(),
            shard,
            dsn: String::new(),
            tables: vec!["orders".into(), "order_items".into()],
        };
        let published = tributary_cdc::published::high_water(&env.kafka(), &source)
            .await
            .unwrap();
        let in_lake = tributary_query_count(
            &session
                .sql(&format!(
                    "SELECT max(_lsn) FROM silver.orders WHERE _shard = {shard}"
                ))
                .await
                .unwrap(),
        );
        assert!(
            in_lake > 0 && published.0 as i64 >= in_lake,
            "shard {shard}: published {published} ({}) < newest in the lake {in_lake}",
            published.0
        );
    }
    env.run_ok(&["down"]);
}

/// After a failover the new primary's WAL can stand behind what the reader
/// streamed from the old one; the reader moves it past that point before
/// making its new slot.
#[tokio::test]
async fn the_wal_is_moved_past_what_the_reader_streamed() {
    let env = Env::stack().await;
    env.up();
    let shard = env.stack_state().shards[0].clone();
    let client = pipeline_connect(&shard.dsn()).await;
    let now: String = scalar(&client, "SELECT pg_current_wal_lsn()::text").await;
    let now: tributary_model::lsn::Lsn = now.parse().unwrap();
    let ahead = tributary_model::lsn::Lsn(now.0 + (40 << 20));
    tributary_cdc::advance_wal_past(&client, "orders.0", ahead)
        .await
        .unwrap();
    let moved: String = scalar(&client, "SELECT pg_current_wal_lsn()::text").await;
    let moved: tributary_model::lsn::Lsn = moved.parse().unwrap();
    assert!(moved > ahead, "{moved} is not past {ahead}");
    assert!(
        moved.0 < ahead.0 + (32 << 20),
        "{moved}: more switches than needed"
    );
    env.run_ok(&["down"]);
}

/// A base backup, then orders before and after a chosen moment: the
/// cluster restored to that moment holds exactly the orders committed
/// before it, and the running shard is untouched.
#[tokio::test]
async fn a_point_in_time_restore_holds_exactly_the_orders_committed_before_it() {
    let mut env = Env::stack().await;
    env.start().await;
    env.load(20, 3, 1);
    let out = env.run_ok(&["backup", "shard0"]);
    assert!(out.contains("backup of shard0 finished"), "{out}");
    env.load(20, 3, 2);
    let shard = env.stack_state().shards[0].clone();
    let source = pipeline_connect(&shard.dsn()).await;
    let ids = async |c: &tokio_postgres::Client| -> Vec<i64> {
        c.query("SELECT id FROM orders ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let target: String = scalar(&source, "SELECT now()::text").await;
    let before = ids(&source).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.load(20, 3, 3);
    let now = ids(&source).await;
    assert!(!before.is_empty(), "the load wrote no order on shard0");
    assert!(now.len() > before.len(), "no order after the target");

    // A rebuild in place is for a lost shard only.
    let refused = env.run(&["restore", "shard0", "--lost"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("still answers"),
        "{err}"
    );
    let out = env.run_ok(&["restore", "shard0", "--to", &target]);
    let port: u16 = out
        .split("port=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {out}"));
    let restored = pipeline_connect(&format!(
        "host=127.0.0.1 port={port} user=tributary dbname=orders"
    ))
    .await;
    assert_eq!(ids(&restored).await, before, "{out}");
    assert_eq!(ids(&source).await, now, "the running shard changed");
    let listed = env.run_ok(&["backup", "shard0", "--list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");

    // Retention: a second backup keeping one removes the first and the WAL
    // only it needed; the old moment is out of reach, with a clear error.
    let archive = shard.archive_dir().unwrap();
    let segments = || {
        std::fs::read_dir(&archive)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.len() == 24)
            .collect::<Vec<_>>()
    };
    let archived = segments();
    let out = env.run_ok(&["backup", "shard0", "--keep", "1"]);
    assert!(
        out.contains("removed 1 backup(s)") && !out.contains(" and 0 archived"),
        "{out}"
    );
    let left = segments();
    assert!(left.len() < archived.len(), "{archived:?} -> {left:?}");
    let listed = env.run_ok(&["backup", "shard0", "--list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let refused = env.run(&["restore", "shard0", "--to", &target]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("no backup finished before"),
        "{err}"
    );
    let out = env.run_ok(&["backup", "shard0", "--keep", "1", "--prune-only"]);
    assert!(out.contains("removed 0 backup(s)"), "{out}");
    env.run_ok(&["down"]);
}

/// The lake folder lost and restored from a backup taken earlier: the
/// ingester resumes from the offsets in the restored commits and silver
/// equals the source again, including what was written after the backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lake_restored_from_a_backup_catches_up() {
    let mut env = Env::stack().await;
    env.start().await;
    env.start_pipeline();
    env.load(20, 4, 21);
    assert_lake_equals_source(&env).await;
    let backup = env.dir.path().join("lake-backup");
    let out = env.run_ok(&["lake", "backup", "--into", backup.to_str().unwrap()]);
    assert!(out.contains("backed up"), "{out}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(backup.join("backup.json")).unwrap())
            .unwrap();
    let tables = manifest["tables"].as_array().unwrap();
    assert!(
        tables
            .iter()
            .any(|t| t["layer"] == "silver" && t["table"] == "orders"),
        "{manifest}"
    );

    env.load(20, 4, 22);
    env.kill9("ingest");
    std::fs::remove_dir_all(env.state_dir().join("lake")).unwrap();
    let refused = env.run(&["lake", "restore", "--from", "/nonexistent-backup"]);
    assert!(!refused.status.success());
    let out = env.run_ok(&["lake", "restore", "--from", backup.to_str().unwrap()]);
    assert!(
        out.contains(&format!("restored {} tables", tables.len()))
            && out.contains("the broker holds every change the restored tables resume from"),
        "{out}"
    );
    let again = env.run(&["lake", "restore", "--from", backup.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already has tables"),
        "a restore never overwrites a lake"
    );
    env.spawn("ingest", &["lake", "ingest"]);
    assert_lake_equals_source(&env).await;
    env.run_ok(&["down"]);
}

/// The drill command, short: a shard primary SIGKILLed under load on a
/// stack of its own; its table says the goals were met, nothing
/// acknowledged was lost and the lake equals the source.
#[tokio::test]
async fn the_shard_kill_drill_meets_its_goals() {
    let env = Env::stack().await;
    let out = env.run_ok(&[
        "drill",
        "shard-kill",
        "--rate",
        "10",
        "--before",
        "4s",
        "--after",
        "8s",
    ]);
    for line in [
        "| RPO: acknowledged orders lost | 0 ",
        "| silver equals the source | true |",
        "| verdict | met |",
        "1 slot lost",
    ] {
        assert!(out.contains(line), "{line:?} missing from\n{out}");
    }
}

/// The broker, lake and shard-lost drills, short: the broker SIGKILLed and
/// started again, the lake folder lost and restored from the backup taken
/// under load, both nodes of a shard lost and the shard rebuilt from its
/// base backup and WAL archive; each meets its goals and the lake
/// converges (after the rebuild, to a source that went back in time).
#[tokio::test]
async fn the_broker_lake_and_shard_lost_drills_meet_their_goals() {
    let env = Env::stack().await;
    for (scenario, recovered, rpo) in [
        (
            "broker-kill",
            "| fault -> broker restarted | ",
            "| RPO: acknowledged orders lost | 0 |",
        ),
        (
            "lake-lost",
            "| fault -> lake restored from backup | ",
            "| RPO: acknowledged orders lost | 0 |",
        ),
        (
            // What the archive had not received is lost, and counted.
            "shard-lost",
            "| fault -> shard rebuilt from backup and archive | ",
            "| RPO: acknowledged orders lost | ",
        ),
    ] {
        let out = env.run_ok(&[
            "drill", scenario, "--rate", "10", "--before", "4s", "--after", "6s", "--down", "2s",
        ]);
        for line in [
            rpo,
            recovered,
            "| silver equals the source | true |",
            "| verdict | met |",
        ] {
            assert!(
                out.contains(line),
                "{scenario}: {line:?} missing from\n{out}"
            );
        }
        assert!(
            !out.contains(&format!("{recovered}never")),
            "{scenario}: never recovered\n{out}"
        );
    }
}

/// `GET /orders/{id}` and where it was answered.
async fn read_order(c: &reqwest::Client, url: &str) -> (String, serde_json::Value) {
    let r = c.get(url).send().await.unwrap();
    assert!(r.status().is_success(), "GET {url}: {}", r.status());
    let from = r
        .headers()
        .get("x-read-from")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (from, r.json().await.unwrap())
}

/// Read-only routes read from the shard's standby while it is shown to be
/// within the bound (`replica_max_lag_ms`, 1 s), and from the primary once
/// it falls behind: with replay paused on the standby, no read sent more
/// than the bound after a change misses it, and an order created meanwhile
/// is readable at once (the primary answers what the standby lacks).
#[tokio::test]
async fn reads_come_from_the_standby_within_the_lag_bound() {
    let mut env = Env::stack().await;
    env.extra = vec![("TRIBUTARY__STACK__STANDBYS".into(), "true".into())];
    env.start().await;
    let base = env.url();
    let c = reqwest::Client::new();
    let customer = post(
        &c,
        format!("{base}/customers"),
        serde_json::json!({"email": "ro@example.com", "name": "Ro", "region": "eu", "country": "DE",
               "city": "Berlin", "address": "Strasse 1", "lat": 52.5, "lon": 13.4}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let product = post(
        &c,
        format!("{base}/products"),
        serde_json::json!({"sku": "RO-1", "name": "ro", "category": "tools", "price": 3.5}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let new_order = async || {
        post(
            &c,
            format!("{base}/orders"),
            serde_json::json!({"customer_id": customer, "items": [{"product_id": product, "quantity": 1}]}),
        )
        .await["id"]
            .as_i64()
            .unwrap()
    };
    let order = new_order().await;
    let url = format!("{base}/orders/{order}");

    // Caught up: the standby answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (from, body) = read_order(&c, &url).await;
        if from == "standby" {
            assert_eq!(body["id"], order, "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no read came from the standby (last: {from:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Replay paused: the standby stops moving; the primary takes writes.
    let shard = env.stack_state().shards[tributary_oltp::shard_of_id(order)].clone();
    let standby = shard.standby.clone().unwrap();
    let on_standby = pipeline_connect(&standby.dsn_of(&shard.database)).await;
    on_standby
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    let paid = post(
        &c,
        format!("{url}/pay"),
        serde_json::json!({"method": "card"}),
    )
    .await;
    let changed = Instant::now();
    let bound = Duration::from_millis(1000);
    let mut stale = 0;
    while changed.elapsed() < bound + Duration::from_secs(2) {
        let sent = Instant::now();
        let (from, body) = read_order(&c, &url).await;
        if body["status"] != paid["status"] {
            stale += 1;
            assert!(
                sent < changed + bound,
                "a read sent {:?} after the change missed it (from {from})",
                sent - changed
            );
        }
        if sent > changed + bound {
            assert_ne!(
                from,
                "standby",
                "a standby paused for {:?} answered",
                sent - changed
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{stale} reads within the bound did not show the payment yet");
    // Created while the standby lags: readable at once, from the primary.
    let fresh = new_order().await;
    let (from, body) = read_order(&c, &format!("{base}/orders/{fresh}")).await;
    assert_eq!(body["id"], fresh, "{body}");
    assert_ne!(from, "standby");

    // Replay resumed: back on the standby, with the payment.
    on_standby
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (from, body) = read_order(&c, &url).await;
        if from == "standby" {
            assert_eq!(body["status"], paid["status"], "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never returned to the standby"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = http_text(&format!("{base}/metrics")).await;
    for from in ["standby", "primary"] {
        assert!(
            metrics.contains(&format!("from=\"{from}\"")),
            "no read counted from the {from}:\n{metrics}"
        );
    }
}
