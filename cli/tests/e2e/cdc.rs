//! End-to-end tests of the CDC reader's production behaviour on real
//! PostgreSQL clusters, the tansu broker and Delta tables: snapshots that
//! resume after a kill, unchanged TOAST values, schema changes, idle slots
//! and watermarks, a transaction of a million changes, slot loss, and a
//! least-privilege role.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::common::*;

async fn shard(env: &Env, i: usize) -> tokio_postgres::Client {
    pipeline_connect(&env.stack_state().shards[i].dsn()).await
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    scalar(client, sql).await
}

/// Inserts `n` customers straight into a shard, ids `offset + 1..=offset + n`
/// (times 1024 plus the shard, as the service numbers them).
async fn insert_customers(client: &tokio_postgres::Client, shard: i64, offset: i64, n: i64) {
    client
        .execute(
            "INSERT INTO customers (id, email, name, region, country, city, address, lat, lon)
             SELECT g * 1024 + $1, 'c' || g || '@example.com', 'Customer ' || g, 'eu', 'NL', 'Delft',
                    'Street ' || g, 52.0, 4.3
             FROM generate_series($2::int8 + 1, $2::int8 + $3::int8) g",
            &[&shard, &offset, &n],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_killed_midway_resumes_with_the_chunks_not_done() {
    let mut env = Env::stack().await;
    env.extra = vec![
        ("TRIBUTARY__CDC__SNAPSHOT_CHUNK_ROWS".into(), "1000".into()),
        ("TRIBUTARY__CDC__SNAPSHOT_WORKERS".into(), "2".into()),
    ];
    env.start().await;
    let db = shard(&env, 0).await;
    // Enough rows that the copy takes seconds even on a quiet machine.
    let rows = 150_000;
    insert_customers(&db, 0, 0, rows).await;
    db.batch_execute("ANALYZE customers").await.unwrap();

    env.spawn("cdc", &["cdc", "run"]);
    let progress =
        "SELECT count(*) FILTER (WHERE done_at IS NOT NULL) FROM tributary_cdc.snapshot_chunks
                    WHERE slot_name = 'tributary_orders_0' AND table_name = 'customers'";
    env.wait_for("a few snapshot chunks done", Duration::from_secs(120), || async {
        db.query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = 'tributary_cdc' AND tablename = 'snapshot_chunks'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
            && count(&db, progress).await >= 2
    })
    .await;
    env.kill9("cdc");
    let (done, total) = (
        count(&db, progress).await,
        count(
            &db,
            "SELECT count(*) FROM tributary_cdc.snapshot_chunks
             WHERE slot_name = 'tributary_orders_0' AND table_name = 'customers'",
        )
        .await,
    );
    assert!(
        done < total,
        "the snapshot finished ({done}/{total} chunks) before the kill; the test needs more rows"
    );

    // Changes while the reader is down: the stream replays them over the
    // resumed snapshot.
    db.batch_execute(
        "UPDATE customers SET name = 'Updated' WHERE (id / 1024) % 7 = 0;
         DELETE FROM customers WHERE (id / 1024) % 11 = 0;",
    )
    .await
    .unwrap();
    insert_customers(&db, 0, rows, 500).await;

    env.start_pipeline();
    assert_lake_equals_source(&env).await;
    assert_eq!(
        count(
            &db,
            "SELECT attempt::int8 FROM tributary_cdc.snapshot_runs WHERE slot_name = 'tributary_orders_0'"
        )
        .await,
        1,
        "the second start should resume the first run"
    );
    // Only the chunks not done were copied again: the second attempt's rows
    // (ordinals from 2^40) are fewer than the table.
    let resumed = env.lake_count("SELECT count(*) FROM bronze.customers WHERE op = 'r' AND shard = 0 AND ordinal >= 1099511627776",
    )
    .await;
    assert!(
        resumed > 0 && resumed < rows,
        "resumed attempt copied {resumed} of {rows} rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_kept_with_replica_identity_default_and_full() {
    let mut env = Env::stack().await;
    env.start().await;
    let db = shard(&env, 0).await;
    let catalog = pipeline_connect(&env.stack_state().catalog.dsn()).await;
    // Stored out of line and uncompressed, so the values really are TOASTed.
    db.batch_execute("ALTER TABLE customers ALTER COLUMN address SET STORAGE EXTERNAL")
        .await
        .unwrap();
    catalog
        .batch_execute(
            "ALTER TABLE products ALTER COLUMN name SET STORAGE EXTERNAL;
             ALTER TABLE products REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    env.start_pipeline();
    // Written after the snapshot, so they arrive through the stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    insert_customers(&db, 0, 0, 3).await;
    db.batch_execute(
        "UPDATE customers SET address = repeat(md5(id::text), 400) WHERE id = 1 * 1024;
         UPDATE customers SET address = repeat(md5((id + 1)::text), 400) WHERE id = 2 * 1024;
         UPDATE customers SET name = 'Renamed once' WHERE id IN (1024, 2048);
         UPDATE customers SET name = 'Renamed twice' WHERE id = 1024;",
    )
    .await
    .unwrap();
    catalog
        .batch_execute(
            "INSERT INTO products (sku, name, category, price)
             VALUES ('BIG-1', repeat(md5('big'), 400), 'tools', 10);
             UPDATE products SET price = 11 WHERE sku = 'BIG-1';
             UPDATE products SET category = 'garden' WHERE sku = 'BIG-1';",
        )
        .await
        .unwrap();
    // The value was left out of the change with DEFAULT identity...
    assert_lake_equals_source(&env).await;
    let unchanged = env
        .lake_count("SELECT count(*) FROM bronze.customers WHERE unchanged_toast LIKE '%address%'")
        .await;
    assert!(
        unchanged >= 2,
        "expected updates with an unchanged TOASTed address, found {unchanged}"
    );
    // ... and kept with FULL identity too, where the key is still the
    // primary key, not every column of the identity.
    let long = env
        .lake_count("SELECT count(*) FROM silver.products WHERE length(name) = 12800")
        .await;
    assert_eq!(long, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_flow_to_silver_while_the_pipeline_runs() {
    let mut env = Env::stack().await;
    env.start().await;
    let db = shard(&env, 0).await;
    insert_customers(&db, 0, 0, 20).await;
    env.start_pipeline();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // DDL runs on every shard, as a migration would; changes on one.
    shard(&env, 1)
        .await
        .batch_execute(
            "ALTER TABLE customers ADD COLUMN loyalty int;
             ALTER TABLE customers ALTER COLUMN loyalty TYPE bigint;
             ALTER TABLE customers DROP COLUMN lon;",
        )
        .await
        .unwrap();
    // Each statement its own transaction, as a migration tool runs them.
    for sql in [
        "UPDATE customers SET name = 'before' WHERE id = 1024",
        "ALTER TABLE customers ADD COLUMN loyalty int",
        "UPDATE customers SET loyalty = 5 WHERE (id / 1024) % 2 = 0",
        "ALTER TABLE customers ALTER COLUMN loyalty TYPE bigint",
        "UPDATE customers SET loyalty = 5000000000 WHERE (id / 1024) % 3 = 0",
        "ALTER TABLE customers DROP COLUMN lon",
        "UPDATE customers SET name = 'after drop' WHERE (id / 1024) % 5 = 0",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    insert_customers_without_lon(&db, 100, 5).await;
    assert_lake_equals_source(&env).await;
    // A rename shows up as a new column; a resnapshot fills it for old rows.
    shard(&env, 1)
        .await
        .batch_execute("ALTER TABLE customers RENAME COLUMN city TO town")
        .await
        .unwrap();
    db.batch_execute("ALTER TABLE customers RENAME COLUMN city TO town")
        .await
        .unwrap();
    db.batch_execute("UPDATE customers SET town = 'Leiden' WHERE id = 2048")
        .await
        .unwrap();
    let out = env.run(&["cdc", "resnapshot", "customers", "--timeout", "120s"]);
    assert!(
        out.status.success(),
        "resnapshot failed: {}{}\n--- cdc log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&env.log("cdc"))
    );
    assert_lake_equals_source(&env).await;
    let recorded = count(
        &db,
        "SELECT count(*) FROM tributary_cdc.schema_changes WHERE table_name = 'customers'",
    )
    .await;
    // The first shape, then: add, widen, drop, rename.
    assert!(
        recorded >= 5,
        "expected the customer table's shapes recorded, found {recorded}"
    );
    let historical_null = env
        .lake_count("SELECT count(*) FROM silver.customers WHERE loyalty IS NULL")
        .await;
    assert!(historical_null > 0, "rows never updated should read NULL");

    // A type change silver cannot hold (text to int) stops ingest of the
    // table at that change; `tributary lake retype` rewrites silver's column
    // and the restarted ingester resumes where it stopped.
    for i in 0..2 {
        shard(&env, i)
            .await
            .batch_execute("ALTER TABLE customers ALTER COLUMN town TYPE int USING length(town)")
            .await
            .unwrap();
    }
    db.batch_execute("UPDATE customers SET town = 42 WHERE id = 2048")
        .await
        .unwrap();
    let ingest_log = env.dir.path().join("ingest.log");
    env.wait_for(
        "ingest of customers to stop on the type change",
        Duration::from_secs(60),
        || async {
            std::fs::read_to_string(&ingest_log)
                .unwrap_or_default()
                .contains("stopped on a change the lake cannot apply")
        },
    )
    .await;
    env.kill9("ingest");
    let out = env.run(&["lake", "retype", "customers", "town", "--to", "Int3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not an Arrow type"),
        "{err}"
    );
    let out = env.run(&["lake", "retype", "customers", "nope", "--to", "Int32"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"nope\""), "{err}");
    let said = env.run_ok(&["lake", "retype", "customers", "town", "--to", "Int32"]);
    assert!(
        said.contains("silver.customers.town is now Int32"),
        "{said}"
    );
    env.spawn("ingest", &["lake", "ingest"]);
    // ALTER TYPE rewrote the source rows without change events: change them
    // once more, so the stream carries their new values.
    for i in 0..2 {
        shard(&env, i)
            .await
            .batch_execute("UPDATE customers SET town = town")
            .await
            .unwrap();
    }
    assert_lake_equals_source(&env).await;
    assert_eq!(
        env.lake_count("SELECT count(*) FROM silver.customers WHERE town = 42")
            .await,
        1
    );
}

async fn insert_customers_without_lon(client: &tokio_postgres::Client, offset: i64, n: i64) {
    client
        .execute(
            "INSERT INTO customers (id, email, name, region, country, city, address, lat, loyalty)
             SELECT g * 1024, 'n' || g || '@example.com', 'New ' || g, 'eu', 'NL', 'Delft', 'Street', 52.0, g
             FROM generate_series($1::int8 + 1, $1::int8 + $2::int8) g",
            &[&offset, &n],
        )
        .await
        .unwrap();
}

/// The slot's lag in bytes behind the server's current WAL position.
async fn slot_lag(client: &tokio_postgres::Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_database_keeps_its_slot_moving_and_publishes_watermarks() {
    let mut env = Env::stack().await;
    env.start().await;
    env.spawn("cdc", &["cdc", "run"]);
    let db = shard(&env, 0).await;
    env.wait_for("the snapshot of shard 0", Duration::from_secs(60), || async {
        db.query_opt(
            "SELECT 1 FROM pg_tables WHERE schemaname = 'tributary_cdc' AND tablename = 'snapshots'",
            &[],
        )
        .await
        .unwrap()
        .is_some()
            && count(&db, "SELECT count(*) FROM tributary_cdc.snapshots").await > 0
    })
    .await;
    // A busy database in the same cluster, not captured: its WAL is the
    // captured (idle) database's WAL too.
    db.batch_execute("CREATE DATABASE busy").await.unwrap();
    let dsn = env.stack_state().shards[0]
        .dsn()
        .replace("dbname=orders", "dbname=busy");
    let busy = pipeline_connect(&dsn).await;
    let start_lsn: String = scalar(&db, "SELECT pg_current_wal_lsn()::text").await;
    busy.batch_execute(
        "CREATE TABLE filler (x text);
         INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 40000);",
    )
    .await
    .unwrap();
    let written: i64 = db
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::int8",
            &[&start_lsn],
        )
        .await
        .unwrap()
        .get(0);
    assert!(written > 30_000_000, "only {written} bytes of WAL written");
    env.wait_for(
        "the idle slot's lag to drop below 1 MB",
        Duration::from_secs(30),
        || async { slot_lag(&db, "tributary_orders_0").await < 1_000_000 },
    )
    .await;

    // Watermarks: every shard says it is complete up to a recent commit.
    let kafka = env.kafka();
    let topic = tributary_model::watermark::watermark_topic(&kafka.topic_prefix, "orders");
    let consumer = kafka_consumer(&kafka, "watermark-test");
    let mut tpl = TopicPartitionList::new();
    for p in 0..kafka.partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut newest: std::collections::BTreeMap<u64, i64> = Default::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let shards = env.stack_state().shards.len() as u64;
    while (newest.len() as u64) < shards && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) {
            let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            let ts = v["commit_ts_us"].as_i64().unwrap();
            let e = newest.entry(v["shard"].as_u64().unwrap()).or_default();
            *e = (*e).max(ts);
        }
    }
    assert_eq!(newest.len() as u64, shards, "watermarks seen: {newest:?}");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    for (shard, ts) in &newest {
        assert!(
            now_us - ts < 60_000_000,
            "shard {shard}'s newest watermark is {} s old",
            (now_us - ts) / 1_000_000
        );
    }
    let status = env.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("slot tributary_orders_0 lag") && text.contains(" s"),
        "status should show slot lag in bytes and seconds:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_a_million_changes_streams_in_bounded_memory() {
    let rows: i64 = std::env::var("TRIBUTARY_TEST_LARGE_TX_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut env = Env::stack().await;
    env.start().await;
    let catalog = pipeline_connect(&env.stack_state().catalog.dsn()).await;
    catalog
        .batch_execute(
            "INSERT INTO products (sku, name, category, price) VALUES ('P-1', 'One', 'tools', 1)",
        )
        .await
        .unwrap();
    env.spawn("cdc", &["cdc", "run"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kafka = env.kafka();
    let topic = format!("{}.catalog.price_changes", kafka.topic_prefix);
    let before = topic_messages(&kafka, &topic);
    catalog
        .execute(
            "INSERT INTO price_changes (product_id, old_price, new_price)
             SELECT (SELECT id FROM products WHERE sku = 'P-1'), 1, 1 + g / 100.0
             FROM generate_series(1, $1::int8) g",
            &[&rows],
        )
        .await
        .unwrap();
    // Once the slot is confirmed past the transaction's commit, every one
    // of its changes is durably in Kafka: the count is final, and must be
    // exactly one event per change.
    let committed: String = scalar(&catalog, "SELECT pg_current_wal_lsn()::text").await;
    let pid = env.pid("cdc");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let confirmed: bool = catalog
            .query_one(
                "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = 'tributary_catalog_0'",
                &[&committed],
            )
            .await
            .unwrap()
            .get(0);
        let n = topic_messages(&kafka, &topic) - before;
        assert!(
            n <= rows,
            "{n} events in Kafka for {rows} changes: some are doubled"
        );
        if confirmed {
            assert_eq!(
                n, rows,
                "the slot was confirmed past the transaction with {n} of its {rows} changes in Kafka"
            );
            break;
        }
        env.assert_running();
        assert!(
            Instant::now() < deadline,
            "only {n} of {rows} changes reached Kafka"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: i64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "reader peak RSS after a {rows}-change transaction: {} MB",
        peak_kb / 1024
    );
    // The transaction's events are about 500 MB of JSON: holding it would show.
    assert!(
        peak_kb < 200 * 1024,
        "reader peak RSS {} MB: memory grows with the transaction",
        peak_kb / 1024
    );
}

/// Messages in a topic: the sum of its partitions' high watermarks.
fn topic_messages(kafka: &tributary_kafka::KafkaConfig, topic: &str) -> i64 {
    let consumer = kafka_consumer(kafka, "count-test");
    (0..kafka.partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(_, high)| high)
                .unwrap_or(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_detected_and_only_its_database_resnapshotted() {
    let mut env = Env::stack().await;
    env.start().await;
    let db = shard(&env, 0).await;
    insert_customers(&db, 0, 0, 50).await;
    env.start_pipeline();
    assert_lake_equals_source(&env).await;
    env.kill9("cdc");

    // Invalidate the slot: too much WAL for max_slot_wal_keep_size.
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
        "DELETE FROM customers WHERE (id / 1024) % 4 = 0",
        "UPDATE customers SET name = 'Changed while lost' WHERE (id / 1024) % 3 = 0",
        "CREATE DATABASE busy",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    let dsn = env.stack_state().shards[0]
        .dsn()
        .replace("dbname=orders", "dbname=busy");
    let busy = pipeline_connect(&dsn).await;
    busy.batch_execute(
        "CREATE TABLE filler (x text);
         INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 40000);",
    )
    .await
    .unwrap();
    for _ in 0..3 {
        db.batch_execute("SELECT pg_switch_wal()").await.unwrap();
        db.batch_execute("CHECKPOINT").await.unwrap();
    }
    let wal_status: Option<String> = scalar(
        &db,
        "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'tributary_orders_0'",
    )
    .await;
    assert_eq!(
        wal_status.as_deref(),
        Some("lost"),
        "the slot was not invalidated"
    );
    db.batch_execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    let other_run = count(
        &shard(&env, 1).await,
        "SELECT count(*) FROM tributary_cdc.snapshot_runs",
    )
    .await;

    env.spawn("cdc", &["cdc", "run"]);
    assert_lake_equals_source(&env).await;
    assert!(
        env.log("cdc").contains("REPLICATION SLOT LOST"),
        "the reader should say loudly that the slot was lost"
    );
    // The other shard kept streaming from its slot: no new snapshot there.
    assert_eq!(
        count(
            &shard(&env, 1).await,
            "SELECT count(*) FROM tributary_cdc.snapshot_runs"
        )
        .await,
        other_run
    );

    // A slot dropped by hand is recovered the same way.
    env.kill9("cdc");
    // The killed reader's walsender lets go of the slot a moment later.
    env.wait_for("the slot to be released", Duration::from_secs(30), || async {
        count(
            &db,
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'tributary_orders_0' AND active",
        )
        .await
            == 0
    })
    .await;
    db.batch_execute(
        "SELECT pg_drop_replication_slot('tributary_orders_0');
         DELETE FROM customers WHERE (id / 1024) % 5 = 0;",
    )
    .await
    .unwrap();
    env.spawn("cdc", &["cdc", "run"]);
    assert_lake_equals_source(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_runs_with_a_least_privilege_role() {
    let mut env = Env::stack().await;
    env.start().await;
    let stack = env.stack_state();
    // What the README tells an administrator to run on every source
    // database, with the pg_hba.conf line it asks for: the role logs in with
    // its password only, over SCRAM-SHA-256.
    const PASSWORD: &str = "reader-Pw-5tq8";
    let setup = |tables: &str| {
        format!(
            "CREATE ROLE tributary_reader LOGIN REPLICATION PASSWORD '{PASSWORD}';
             GRANT USAGE ON SCHEMA public TO tributary_reader;
             GRANT SELECT ON {tables} TO tributary_reader;
             CREATE SCHEMA tributary_cdc AUTHORIZATION tributary_reader;
             CREATE PUBLICATION tributary_pub FOR TABLE {tables};"
        )
    };
    let as_reader = |pg: &tributary_stack::PgInstance| {
        pg.dsn().replace(
            "user=tributary",
            &format!("user=tributary_reader password={PASSWORD}"),
        )
    };
    let orders = "customers, orders, order_items, payments, shipments, outbox";
    let mut shards = vec![];
    for (pg, tables) in stack
        .shards
        .iter()
        .map(|s| (s, orders))
        .chain([(&stack.catalog, "products, price_changes")])
    {
        pipeline_connect(&pg.dsn())
            .await
            .batch_execute(&setup(tables))
            .await
            .unwrap();
        require_scram(pg, "tributary_reader").await;
        shards.push(as_reader(pg));
    }
    let catalog = shards.pop().unwrap();
    // Without its password the role is refused, and what the server keeps
    // is a SCRAM verifier: the reader can only have logged in over SCRAM.
    let refused = tokio_postgres::connect(
        &stack.shards[0]
            .dsn()
            .replace("user=tributary", "user=tributary_reader"),
        tokio_postgres::NoTls,
    )
    .await;
    let refusal = refused
        .err()
        .and_then(|e| std::error::Error::source(&e).map(ToString::to_string));
    assert_eq!(
        refusal.as_deref(),
        Some("password missing"),
        "the reader role logged in without its password"
    );
    let verifier: String = shard(&env, 0)
        .await
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'tributary_reader'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let reader = pipeline_connect(&shards[0]).await;
    let denied = reader.query("SELECT * FROM shard_meta", &[]).await;
    assert!(
        denied.is_err(),
        "the reader role can read a table it should not"
    );
    let config = env.dir.path().join("reader.toml");
    std::fs::write(
        &config,
        format!(
            "[sources]\nshards = {}\ncatalog = {:?}\n",
            serde_json::to_string(&shards).unwrap(),
            catalog
        ),
    )
    .unwrap();
    // Customers live on the shard their id names: 10 on shard 0, 5 on 1.
    insert_customers(&shard(&env, 0).await, 0, 0, 10).await;
    insert_customers(&shard(&env, 1).await, 1, 0, 5).await;
    env.spawn("cdc", &["--config", config.to_str().unwrap(), "cdc", "run"]);
    env.spawn("ingest", &["lake", "ingest"]);
    // Changes made once both slots exist are streamed, not snapshotted.
    for i in 0..stack.shards.len() {
        let db = shard(&env, i).await;
        env.wait_for(
            &format!("the slot on shard {i}"),
            Duration::from_secs(60),
            || async { count(&db, "SELECT count(*) FROM pg_replication_slots").await > 0 },
        )
        .await;
    }
    for (i, rows) in [(0, 10), (1, 5)] {
        let updated = shard(&env, i)
            .await
            .execute("UPDATE customers SET name = 'streamed'", &[])
            .await
            .unwrap();
        assert_eq!(updated, rows, "customers updated on shard {i}");
    }
    insert_customers(&shard(&env, 0).await, 0, 10, 10).await;
    assert_lake_equals_source(&env).await;
    assert_eq!(
        env.lake_count("SELECT count(*) FROM bronze.customers WHERE op = 'u'")
            .await,
        15,
        "the updates did not all arrive through the reader's stream"
    );
    // The stream really runs as the reader role.
    let user: String = scalar(
        &reader,
        "SELECT usename::text FROM pg_stat_replication WHERE application_name = 'tributary-cdc'",
    )
    .await;
    assert_eq!(user, "tributary_reader");
}

/// `psql` of the stack's PostgreSQL: the test's way into a cluster that
/// refuses plaintext (tokio-postgres here has no TLS).
fn psql(dsn: &str, sql: &str) -> String {
    let bin = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .map(|o| std::path::PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("psql"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "psql".into());
    let out = std::process::Command::new(bin)
        .args([dsn, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A CA, a server certificate for `localhost` (only) signed by it, and an
/// unrelated CA, made with the `openssl` CLI in `dir`.
fn certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for args in [
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=tributary test CA",
            ],
        ]
        .concat(),
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ][..]
            .to_vec(),
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "wrong.key",
                "-out",
                "wrong.crt",
                "-days",
                "2",
                "-subj",
                "/CN=another CA",
            ],
        ]
        .concat(),
    ] {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A reader of `tls_probe` on shard 0 in this process, into the stack's
/// broker, under names of its own (`tag`).
fn tls_reader(
    stack: &tributary_stack::StackState,
    dsn: String,
    tag: &str,
) -> (
    tokio::task::JoinHandle<tributary_cdc::Result<()>>,
    tokio_util::sync::CancellationToken,
) {
    let config = tributary_cdc::CdcConfig {
        slot_prefix: format!("tls_{tag}"),
        publication: format!("tls_pub_{tag}"),
        heartbeat_interval_ms: 500,
        ..Default::default()
    };
    let mut kafka = tributary_kafka::KafkaConfig::local(&stack.broker.address());
    kafka.topic_prefix = format!("tls{tag}");
    let source = tributary_cdc::SourceDb {
        db: "orders".into(),
        shard: 0,
        dsn,
        tables: vec!["tls_probe".into()],
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(tributary_cdc::run(
        config,
        kafka,
        vec![source],
        shutdown.clone(),
    ));
    (handle, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_streams_over_tls_and_verify_full_rejects_wrong_certificates() {
    let mut env = Env::stack().await;
    env.up();
    let stack = env.stack_state();
    let pg = stack.shards[0].clone();
    shard(&env, 0)
        .await
        .batch_execute("CREATE TABLE tls_probe (id bigint PRIMARY KEY, note text)")
        .await
        .unwrap();

    // The cluster: TLS with a certificate for localhost, and TCP connections
    // without TLS rejected (replication ones too).
    let certs = env.dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    certificates(&certs);
    for file in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(file), pg.data_dir.join(file)).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            pg.data_dir.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    if nix::unistd::Uid::effective().is_root() {
        let ok = std::process::Command::new("chown")
            .arg("postgres:postgres")
            .arg(pg.data_dir.join("server.crt"))
            .arg(pg.data_dir.join("server.key"))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let conf = pg.data_dir.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).unwrap();
    text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(&conf, text).unwrap();
    std::fs::write(
        pg.data_dir.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\n\
         hostssl replication all 127.0.0.1/32 trust\n\
         hostnossl all all 0.0.0.0/0 reject\n\
         hostnossl replication all 0.0.0.0/0 reject\n",
    )
    .unwrap();
    shard(&env, 0)
        .await
        .execute("SELECT pg_reload_conf()", &[])
        .await
        .unwrap();
    let server_log =
        || tail(&std::fs::read_to_string(pg.data_dir.join("server.log")).unwrap_or_default());
    let plain = pg.dsn();
    env.wait_for(
        "plaintext connections to be refused",
        Duration::from_secs(30),
        || {
            let plain = plain.clone();
            async move {
                tokio_postgres::connect(&plain, tokio_postgres::NoTls)
                    .await
                    .is_err()
            }
        },
    )
    .await;
    let base = format!("port={} user=tributary dbname={}", pg.port, pg.database);
    let ca = certs.join("ca.crt").display().to_string();
    let wrong = certs.join("wrong.crt").display().to_string();
    let libpq = format!("host=localhost {base} sslmode=verify-full sslrootcert={ca}");
    assert_eq!(psql(&libpq, "SHOW ssl"), "on", "{}", server_log());

    let mut rows = 0;
    for (tag, dsn) in [
        ("require", format!("host=127.0.0.1 {base} sslmode=require")),
        (
            "full",
            format!("host=localhost {base} sslmode=verify-full sslrootcert={ca}"),
        ),
        // The chain only: the certificate is not for 127.0.0.1.
        (
            "ca",
            format!("host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={ca}"),
        ),
    ] {
        let (reader, shutdown) = tls_reader(&stack, dsn, tag);
        let slot = format!("tls_{tag}_orders_0");
        env.wait_for(&format!("the {tag} reader's snapshot"), Duration::from_secs(60), || {
            let (libpq, slot) = (libpq.clone(), slot.clone());
            let finished = reader.is_finished();
            async move {
                assert!(!finished, "the {slot} reader stopped");
                psql(&libpq, &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")) == "1"
                    && psql(&libpq, &format!("SELECT count(*) FROM tributary_cdc.snapshots WHERE slot_name = '{slot}'")) == "1"
            }
        })
        .await;
        // Changes made now can only reach Kafka through the stream.
        psql(
            &libpq,
            &format!(
                "INSERT INTO tls_probe SELECT g, '{tag}' FROM generate_series({} + 1, {} + 2) g",
                rows, rows
            ),
        );
        rows += 2;
        let topic = format!("tls{tag}.orders.tls_probe");
        let kafka = tributary_kafka::KafkaConfig::local(&stack.broker.address());
        env.wait_for(
            &format!("the {tag} reader's events"),
            Duration::from_secs(60),
            || {
                let (kafka, topic) = (kafka.clone(), topic.clone());
                async move {
                    tokio::task::spawn_blocking(move || topic_messages(&kafka, &topic))
                        .await
                        .unwrap()
                        == rows
                }
            },
        )
        .await;
        // Both of the reader's connections are encrypted: the SQL one
        // (heartbeats) and the walsender.
        let sessions = psql(
            &libpq,
            "SELECT a.backend_type || ':' || s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'tributary-cdc' ORDER BY 1",
        );
        let sessions: std::collections::BTreeSet<&str> = sessions.lines().collect();
        assert_eq!(
            sessions,
            ["client backend:true", "walsender:true"].into(),
            "{tag}: the reader's connections"
        );
        shutdown.cancel();
        reader.await.unwrap().unwrap();
    }

    // verify-full refuses a server whose certificate another CA signed, and
    // one whose certificate is for another name, with a clear error and
    // without retrying forever.
    for (tag, dsn, says) in [
        (
            "wrongca",
            format!("host=localhost {base} sslmode=verify-full sslrootcert={wrong}"),
            "UnknownIssuer",
        ),
        (
            "wronghost",
            format!("host=127.0.0.1 {base} sslmode=verify-full sslrootcert={ca}"),
            "not valid for name",
        ),
    ] {
        let (reader, _shutdown) = tls_reader(&stack, dsn, tag);
        let err = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("{tag}: the reader kept retrying"))
            .unwrap()
            .unwrap_err();
        let text = tributary_model::error_chain(&err);
        assert!(!err.is_transient(), "{tag}: {text}");
        assert!(
            text.contains("invalid peer certificate") && text.contains(says),
            "{tag}: {text}"
        );
    }
}
