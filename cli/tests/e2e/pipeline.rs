//! End-to-end tests on real components: PostgreSQL clusters made with
//! `initdb`, the tansu broker, Delta tables in a temporary folder, and the
//! `tributary` binary run as separate processes so they can be SIGKILLed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tributary_stack::Sources;

use crate::common::*;

/// `tributary trace` follows an order with lines from its source commit
/// through bronze into silver and gold.
async fn assert_traced(env: &Env, session: &tributary_query::Session) {
    let batches = session
        .sql(
            "SELECT o.id FROM silver.orders o JOIN silver.order_items i ON i.order_id = o.id \
             ORDER BY o.id LIMIT 1",
        )
        .await
        .unwrap();
    let id = tributary_stack::checks::first_column(&batches)
        .into_iter()
        .next()
        .expect("an order with lines");
    let out = env.run_ok(&["trace", &id]);
    assert!(out.starts_with(&format!("order {id}: ")), "{out}");
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| orders ") || l.starts_with("| order_items "))
        .collect();
    assert!(
        // Inserted (c), or copied by the initial snapshot (r).
        rows.iter()
            .any(|l| l.starts_with("| orders | c |") || l.starts_with("| orders | r |"))
            && rows.iter().any(|l| {
                l.starts_with("| order_items | c |") || l.starts_with("| order_items | r |")
            }),
        "the order's insert and its lines: {out}"
    );
    // Caught up: every change is in silver, with a measured latency.
    assert!(
        rows.iter().all(|l| !l.contains("not yet")),
        "a change not complete in silver after catch-up: {out}"
    );
    assert!(out.contains("gold.fct_order_line: "), "{out}");
    assert!(!out.contains("gold.fct_order_line: 0 lines"), "{out}");
    let err = env.run(&["trace", "987654321"]);
    assert!(
        !err.status.success()
            && String::from_utf8_lossy(&err.stderr).contains("no change of it is in bronze"),
        "{err:?}"
    );
}

/// Writes a known set of changes through the API: inserts, updates and deletes.
async fn scripted_changes(base: &str) {
    let c = reqwest::Client::new();
    let mut products = vec![];
    for i in 0..4 {
        let p = post(&c, format!("{base}/products"), json!({"sku": format!("E2E-{i}"), "name": format!("Thing {i}"), "category": "tools", "price": 10.5})).await;
        products.push(p["id"].as_i64().unwrap());
    }
    let mut customers = vec![];
    for (i, region) in ["eu", "us", "apac", "eu", "us", "us"].iter().enumerate() {
        let cu = post(
            &c,
            format!("{base}/customers"),
            json!({"email": format!("e2e{i}@example.com"), "name": format!("Customer {i}"), "region": region,
                   "country": "NL", "city": "Delft", "address": "Street 1", "lat": 52.0, "lon": 4.3}),
        )
        .await;
        customers.push(cu["id"].as_i64().unwrap());
    }
    let r = c
        .patch(format!("{base}/customers/{}", customers[0]))
        .json(&json!({"address": "Canal 9", "city": "Leiden"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let r = c
        .patch(format!("{base}/products/{}/price", products[1]))
        .json(&json!({"price": 12.0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for (i, cust) in customers.iter().enumerate() {
        let o = post(
            &c,
            format!("{base}/orders"),
            json!({"customer_id": cust, "items": [{"product_id": products[i % 4], "quantity": 2}, {"product_id": products[(i + 1) % 4], "quantity": 1}]}),
        )
        .await;
        let id = o["id"].as_i64().unwrap();
        match i % 3 {
            0 => {
                let r = c
                    .delete(format!("{base}/orders/{id}"))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "delete order {id}: {}", r.status());
            }
            1 => {
                post(
                    &c,
                    format!("{base}/orders/{id}/pay"),
                    json!({"method": "card"}),
                )
                .await;
                post(
                    &c,
                    format!("{base}/orders/{id}/ship"),
                    json!({"carrier": "DHL"}),
                )
                .await;
            }
            _ => {
                post(&c, format!("{base}/orders/{id}/cancel"), json!({})).await;
            }
        }
    }
}

/// The test's load reached the lake through the stream, not only the snapshot.
async fn assert_streamed(env: &Env) {
    let session = env.session().await;
    let batches = session
        .sql("SELECT count(*) FROM bronze.orders WHERE op <> 'r'")
        .await
        .unwrap();
    assert!(
        tributary_query_count(&batches) > 0,
        "no streamed changes in bronze.orders"
    );
}

/// A started stack whose pipeline has caught up with [`scripted_changes`].
async fn caught_up() -> Env {
    let mut env = Env::stack().await;
    env.start().await;
    scripted_changes(&env.url()).await;
    env.start_pipeline();
    assert_lake_equals_source(&env).await;
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_changes_flow_to_silver_and_gold_reconciles() {
    let mut env = Env::stack().await;
    let mut webhook = super::observe::Webhook::start().await;
    env.extra.push((
        "TRIBUTARY__OBSERVE__ALERT_WEBHOOK".into(),
        webhook.url.clone(),
    ));
    // Every process sends its spans to an OTLP/HTTP receiver.
    let mut collector = super::observe::Webhook::start().await;
    env.extra.push((
        "TRIBUTARY__OBSERVE__OTLP_ENDPOINT".into(),
        collector.url.trim_end_matches("/alerts").to_string(),
    ));
    env.up();
    // The monitoring too (Prometheus, Alertmanager, the exporters): checked
    // below, once every process runs (`observe.rs`).
    let up = env.run_ok(&["up", "--observe"]);
    assert!(up.contains("monitoring is up"), "{up}");
    // `up` is idempotent: `start` runs it again.
    env.start().await;
    // Data written before the reader starts arrives through the snapshot.
    scripted_changes(&env.url()).await;
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let ingest_metrics = format!("127.0.0.1:{}", free_port());
    env.spawn("cdc", &["cdc", "run", "--metrics", &metrics_addr]);
    env.spawn("ingest", &["lake", "ingest", "--metrics", &ingest_metrics]);
    let url = env.url();
    // Writes that bypass the API are captured too, including a primary-key
    // change (a delete of the old row plus an insert of the new one).
    let lonely = post(
        &reqwest::Client::new(),
        format!("{url}/customers"),
        json!({"email": "lonely@example.com", "name": "Lonely", "region": "eu", "country": "NL",
               "city": "Delft", "address": "Street 2", "lat": 52.1,
               // A float just below a half billionth: verify must compare it
               // the same way on both sides (see `checks::compare_silver`).
               "lon": 139.63732932549982}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let stack_state = env.stack_state();
    let mut changed = 0;
    for shard in &stack_state.shards {
        let client = pipeline_connect(&shard.dsn()).await;
        changed += client
            .execute(
                "UPDATE customers SET id = id + 1000000000, name = 'Renamed' WHERE id = $1",
                &[&lonely],
            )
            .await
            .unwrap();
    }
    assert_eq!(
        changed, 1,
        "the primary-key update should find exactly one row"
    );
    // Restarting the service after the reader set up its state in the same
    // databases must find the same tables (a schema named like the role once
    // captured the service's unqualified tables).
    env.kill9("oltp");
    env.spawn("oltp", &["oltp", "serve"]);
    env.wait_http().await;
    let products = http_text(&format!("{url}/products")).await;
    assert!(
        products.contains("E2E-0"),
        "the restarted service lost the catalog: {products}"
    );
    env.load(30, 15, 7);
    // Streaming for a while now (not snapshotting): an order with the
    // client's trace, followed below.
    let traced = super::observe::place_traced_order(&url).await;
    env.assert_running();
    assert_lake_equals_source(&env).await;
    assert_streamed(&env).await;
    let metrics = http_text(&format!("http://{metrics_addr}/metrics")).await;
    assert!(
        metric(
            &metrics,
            "tributary_cdc_events_total",
            &[("table", "orders"), ("op", "c")]
        )
        .is_some_and(|n| n > 0.0),
        "reader metrics lack order inserts:\n{metrics}"
    );
    let metrics = http_text(&format!("http://{ingest_metrics}/metrics")).await;
    assert!(
        metric(
            &metrics,
            "tributary_lake_bronze_rows_total",
            &[("table", "orders")]
        )
        .is_some_and(|n| n > 0.0),
        "ingester metrics lack bronze rows:\n{metrics}"
    );
    for addr in [&metrics_addr, &ingest_metrics] {
        let health = http_text(&format!("http://{addr}/healthz")).await;
        assert_eq!(health.trim(), "ok", "/healthz on {addr}");
    }
    super::observe::assert_observed(&env, &mut webhook).await;
    super::observe::assert_order_traced(&env, &mut collector, &traced).await;
    super::observe::assert_top(&env);
    super::observe::assert_probe(&env);

    // Gold reconciles with the source shards.
    env.run_ok(&["etl", "run", "marts"]);
    let sources = Sources::resolve(&env.config(), Some(&env.stack_state())).unwrap();
    let session = env.session().await;
    let r = tributary::demo::reconcile(&sources, &session)
        .await
        .unwrap();
    assert!(r.revenue_source > 0);
    assert_eq!(
        r.revenue_gold, r.revenue_source,
        "gold revenue differs from the shards"
    );
    assert!(r.balanced(), "reconciliation is off");
    assert_traced(&env, &session).await;

    // The console answers one-shot queries in every format.
    let json = env.run_ok(&[
        "sql",
        "-e",
        "SELECT count(*) AS n FROM gold.fct_order_line",
        "--format",
        "json",
    ]);
    assert!(json.contains("\"n\""), "{json}");
    let out = env.run(&["sql", "-e", "SELEC nonsense"]);
    assert!(!out.status.success());
    let status: Value = serde_json::from_str(&env.run_ok(&["status", "--json"])).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["healthy"] == true),
        "{status}"
    );

    // `wait` and `verify` as a user runs them: caught up, and every table
    // equal...
    assert_waits_and_verifies(&env);
    // ... but not once the lake misses a change: the ingester stops and a
    // source row changes.
    env.kill9("ingest");
    let mut changed = 0;
    for shard in &stack_state.shards {
        changed += pipeline_connect(&shard.dsn())
            .await
            .execute(
                "UPDATE customers SET name = 'changed behind the lake'
                 WHERE id = (SELECT min(id) FROM customers)",
                &[],
            )
            .await
            .unwrap();
    }
    assert!(changed > 0, "no customer to change");
    let out = env.run(&["wait", "--timeout", "3s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is `tributary lake ingest` running?"),
        "wait with the ingester stopped: {err}"
    );
    let out = env.run(&["verify"]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success()
            && err.contains("silver differs from the source")
            && stdout
                .lines()
                .any(|l| l.starts_with("customers ") && l.ends_with("DIFFERENT")),
        "verify of a lake that misses a change: {stdout}{err}"
    );
    super::observe::assert_ingester_seen_down(&env).await;
    // Back again: the ingester catches up and `verify` agrees.
    env.spawn("ingest", &["lake", "ingest"]);
    assert_waits_and_verifies(&env);

    // `down --purge`: every process of the stack stops, and its data is gone.
    let state = env.stack_state();
    let mut pids: Vec<i32> = state
        .all_pg()
        .map(|pg| first_number(&pg.data_dir.join("postmaster.pid")))
        .collect();
    pids.push(first_number(&state.broker.data_dir.join("pid")));
    let ports: Vec<u16> = state
        .all_pg()
        .map(|pg| pg.port)
        .chain([state.broker.port])
        .collect();
    let folders: Vec<PathBuf> = state
        .all_pg()
        .map(|pg| pg.data_dir.clone())
        .chain([state.broker.data_dir.clone(), env.state_dir()])
        .collect();
    for name in ["cdc", "ingest", "oltp"] {
        env.kill9(name);
    }
    let said = env.run_ok(&["down", "--purge"]);
    assert!(
        said.contains("stack is down and its data deleted"),
        "{said}"
    );
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the stack still runs");
    }
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} of the stack still answers"
        );
    }
    for folder in folders {
        assert!(!folder.exists(), "{} is left", folder.display());
    }
    let out = env.run(&["status"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no stack"),
        "status after down --purge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tributary wait` says the lake caught up, and `tributary verify` finds
/// every table equal to its source.
fn assert_waits_and_verifies(env: &Env) {
    let waited = env.run_ok(&["wait", "--timeout", "120s"]);
    assert!(waited.contains("caught up"), "{waited}");
    let verified = env.run_ok(&["verify"]);
    let tables: Vec<&str> = verified.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(
        tables.len(),
        tributary_model::domain::TABLES.len(),
        "{verified}"
    );
    assert!(tables.iter().all(|l| l.ends_with("equal")), "{verified}");
}

/// The number on the first line of a pid file.
fn first_number(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .next()
        .unwrap_or_default()
        .trim()
        .parse()
        .unwrap()
}

/// Whether process `pid` runs: it exists and is not a zombie (a stopped
/// server left to whoever adopted it).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_reader_and_ingester_loses_and_doubles_nothing() {
    let mut env = Env::stack().await;
    env.start().await;
    env.start_pipeline();
    let mut load = env.spawn_load(40, 25, 11);
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.kill9("cdc");
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.kill9("ingest");
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.start_pipeline();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // And once more, the ingester alone, while it is busy.
    env.kill9("ingest");
    env.spawn("ingest", &["lake", "ingest"]);
    let status = load.wait().unwrap();
    assert!(status.success(), "load failed");
    env.assert_running();
    assert_lake_equals_source(&env).await;
    assert_streamed(&env).await;
    assert!(
        env.log("cdc").contains("resuming from slot"),
        "the restarted reader did not resume from its slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_snapshot_clears_what_the_interrupted_one_left() {
    let mut env = caught_up().await;
    env.kill9("cdc");
    // The slot now has no recorded snapshot (as if made by someone else),
    // and rows disappear while no reader runs: the replacement snapshot must
    // clear them from silver, not only add the rows that remain.
    let stack_state = env.stack_state();
    let mut deleted = 0;
    for pg in stack_state.all_pg() {
        let client = pipeline_connect(&pg.dsn()).await;
        client
            .batch_execute(
                "DELETE FROM tributary_cdc.snapshots; DELETE FROM tributary_cdc.snapshot_runs;",
            )
            .await
            .unwrap();
        if pg.database == "orders" {
            deleted += client.execute("DELETE FROM shipments", &[]).await.unwrap();
        }
    }
    assert!(deleted > 0, "no shipments to delete");
    env.spawn("cdc", &["cdc", "run"]);
    assert_lake_equals_source(&env).await;
    assert!(
        env.log("cdc").contains("slot has no recorded snapshot"),
        "{}",
        env.log("cdc")
    );
}

#[test]
fn broker_down_at_start_is_a_clear_error() {
    let env = Env::new();
    for args in [&["cdc", "run"][..], &["lake", "ingest"][..]] {
        let out = env
            .command(args)
            .env("TRIBUTARY__KAFKA__BROKERS", "127.0.0.1:1")
            .env(
                "TRIBUTARY__SOURCES__SHARDS",
                "[\"host=127.0.0.1 port=1 user=x dbname=orders\"]",
            )
            .env(
                "TRIBUTARY__SOURCES__CATALOG",
                "host=127.0.0.1 port=1 user=x dbname=catalog",
            )
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded without a broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("127.0.0.1:1") && err.contains("broker"),
            "{args:?}: unclear error: {err}"
        );
    }
}

#[test]
fn unknown_config_keys_are_named() {
    let env = Env::new();
    let out = env
        .command(&["status"])
        .env("TRIBUTARY__KAFKA__BROKERZ", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("brokerz"), "{err}");
    let file = env.dir.path().join("bad.toml");
    std::fs::write(&file, "[lake]\nroot = \"/tmp/x\"\nrooot = 1\n").unwrap();
    let out = env
        .command(&["--config", file.to_str().unwrap(), "status"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lake.rooot") || err.contains("rooot"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_listed_and_the_pipeline_goes_on() {
    let mut env = caught_up().await;
    let none: Value =
        serde_json::from_str(&env.run_ok(&["lake", "dlq", "list", "--json"])).unwrap();
    assert_eq!(none, json!([]), "a clean run has no dead letters");

    // A message on a live change topic that no decoder takes, then more
    // traffic behind it.
    let (topic, partition, offset) =
        produce_raw(&env, "orders", b"0:poison", b"{\"op\": \"c\", truncated").await;
    env.load(30, 8, 3);
    env.assert_running();
    assert_lake_equals_source(&env).await;

    let listed: Value =
        serde_json::from_str(&env.run_ok(&["lake", "dlq", "list", "--table", "orders", "--json"]))
            .unwrap();
    let letters = listed.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    let d = &letters[0];
    assert_eq!(d["topic"], topic.as_str());
    assert_eq!(d["partition"], partition);
    assert_eq!(d["offset"], offset);
    assert_eq!(d["table"], "orders");
    assert_eq!(d["status"], "pending");
    assert_eq!(d["payload_bytes"], 21);
    assert!(
        d["error"].as_str().unwrap().contains("line 1 column"),
        "{d}"
    );
    assert!(d["failed_at"].as_str().unwrap().starts_with("20"), "{d}");
    // Another table's filter shows nothing; the text listing names the error.
    let out = env.run(&["lake", "dlq", "list", "--table", "payments", "--json"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        json!([])
    );
    let out = env.run(&["lake", "dlq", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{topic} {partition}:{offset} pending")),
        "{text}"
    );
    // The ingester logged it and did not stop.
    env.assert_running();
    assert!(
        env.log("ingest").contains("dead-letter"),
        "{}",
        tail(&env.log("ingest"))
    );

    // Replay with the same decoder: it still fails and stays pending.
    env.kill9("ingest");
    let text = env.run_ok(&[
        "lake",
        "dlq",
        "replay",
        "--table",
        "orders",
        "--offset",
        &format!("{partition}:{offset}"),
    ]);
    assert!(
        text.contains("still fails") && text.contains("0 replayed"),
        "{text}"
    );
    let out = env.run(&["lake", "dlq", "replay"]);
    assert!(
        !out.status.success(),
        "replay without a selection must refuse"
    );
}

/// `tributary_lake_silver_freshness_seconds{table}` from an ingester's /metrics.
async fn freshness_gauge(metrics: &str, table: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    metric(
        &text,
        "tributary_lake_silver_freshness_seconds",
        &[("table", table)],
    )
}

/// `tributary status --json`: (freshness seconds, detail) of `silver.<table>`.
fn status_freshness(env: &Env, table: &str) -> (Option<f64>, String) {
    let status: Value = serde_json::from_str(&env.run_ok(&["status", "--json"])).unwrap();
    let c = status
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component"] == format!("silver.{table}"))
        .unwrap_or_else(|| panic!("no silver.{table} in {status}"))
        .clone();
    (
        c["freshness_seconds"].as_f64(),
        c["detail"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tables_stay_fresh_and_a_stopped_ingester_makes_freshness_grow() {
    let mut env = Env::stack().await;
    env.extra.push((
        "TRIBUTARY__INGEST__FRESHNESS_RECORD_MS".into(),
        "1000".into(),
    ));
    env.start().await;
    // Every table gets rows, so every silver table exists.
    scripted_changes(&env.url()).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    env.spawn("cdc", &["cdc", "run"]);
    env.spawn("ingest", &["lake", "ingest", "--metrics", &metrics]);
    assert_lake_equals_source(&env).await;

    // Busy: customers on shard 0 change all the time. Idle: shipments (same
    // database, other table) and products (other database) do not change.
    let stack_state = env.stack_state();
    let shard0 = pipeline_connect(&stack_state.shards[0].dsn()).await;
    let busy = tokio::spawn(async move {
        for i in 0..400 {
            shard0
                .execute(
                    "UPDATE customers SET name = 'busy ' || $1::int::text, updated_at = now()",
                    &[&i],
                )
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Give the idle tables a few heartbeats beyond the initial catch-up.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut worst: BTreeMap<&str, f64> = BTreeMap::new();
    for _ in 0..8 {
        for table in ["shipments", "products", "customers"] {
            let f = freshness_gauge(&metrics, table)
                .await
                .unwrap_or_else(|| panic!("no freshness gauge for {table}"));
            let w = worst.entry(table).or_insert(0.0);
            *w = w.max(f);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!("worst freshness while busy: {worst:?}");
    // Heartbeats every second; a watermark is published at the heartbeat
    // after its commit was acknowledged, then batched for up to 300 ms.
    for (table, f) in &worst {
        assert!(*f < 6.0, "{table} is {f} s behind while the pipeline runs");
    }
    // The lake records it too, for `tributary status`.
    for table in ["shipments", "products"] {
        let (f, detail) = status_freshness(&env, table);
        let f = f.unwrap_or_else(|| panic!("no freshness for {table}: {detail}"));
        assert!(f < 8.0, "status: {table} is {f} s behind: {detail}");
        assert!(detail.contains("watermarks"), "{detail}");
    }

    // The ingester stops: silver falls behind, and status says so.
    env.kill9("ingest");
    let (before, _) = status_freshness(&env, "customers");
    tokio::time::sleep(Duration::from_secs(6)).await;
    for table in ["customers", "shipments"] {
        let (after, detail) = status_freshness(&env, table);
        let after = after.unwrap();
        assert!(
            after >= 6.0 && after > before.unwrap_or(0.0),
            "status: {table} is only {after} s behind with the ingester stopped: {detail}"
        );
    }
    busy.await.unwrap();

    // Back again: it catches up and is fresh again.
    env.spawn("ingest", &["lake", "ingest", "--metrics", &metrics]);
    assert_lake_equals_source(&env).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let f = freshness_gauge(&metrics, "customers").await.unwrap();
    assert!(f < 6.0, "customers is {f} s behind after catching up");
    // The end-to-end histogram saw the streamed changes.
    let text = http_text(&format!("http://{metrics}/metrics")).await;
    let count = metric(&text, "tributary_lake_freshness_seconds_count", &[]);
    assert!(count.is_some_and(|n| n > 0.0), "{text}");
}
