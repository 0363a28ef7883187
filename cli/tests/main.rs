//! End-to-end tests on real components: PostgreSQL clusters made with
//! `initdb`, the tansu broker, Delta tables in a temporary folder, and the
//! `tributary` binary run as separate processes so they can be SIGKILLed.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tributary::config::{self, Config};
use tributary::pipeline::{self, Sources};
use tributary::stack::{self, StackState};

/// Stacks are heavy for a 2-core machine: end-to-end tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// A stack of its own under a temporary state folder.
struct Env {
    dir: tempfile::TempDir,
    oltp_port: u16,
    children: Vec<(String, Child)>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("tributary-e2e-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let oltp_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Env {
            dir,
            oltp_port,
            children: vec![],
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![
            (
                "TRIBUTARY__STATE_DIR".into(),
                self.state_dir().display().to_string(),
            ),
            (
                "TRIBUTARY__OLTP__LISTEN".into(),
                format!("127.0.0.1:{}", self.oltp_port),
            ),
            // Small batches so kills land between commits.
            ("TRIBUTARY__INGEST__BATCH_MAX_MS".into(), "300".into()),
            (
                "TRIBUTARY__CDC__HEARTBEAT_INTERVAL_MS".into(),
                "1000".into(),
            ),
            ("TRIBUTARY_LOG".into(), "info".into()),
        ]
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn config(&self) -> Config {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("TRIBUTARY__"))
            .collect();
        env.extend(self.vars());
        config::load_from_env(&env).unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .envs(self.vars())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    fn kill9(&mut self, name: &str) {
        let i = self.children.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    fn assert_running(&mut self) {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "{name} exited with {status}:\n{}",
                    std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                        .unwrap_or_default()
                );
            }
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.oltp_port)
    }

    async fn wait_http(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/healthz", self.url())).await
                && r.status().is_success()
            {
                return;
            }
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "order API did not come up:\n{}",
                self.log("oltp")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(cfg) = std::panic::catch_unwind(|| self.config()) {
            let _ = stack::down(&cfg, true);
        }
    }
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let r = client.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url} -> {status}: {v}");
    v
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

async fn assert_lake_equals_source(env: &Env) {
    let cfg = env.config();
    let stack = StackState::load(&cfg.state_dir).unwrap().unwrap();
    let sources = Sources::resolve(&cfg, Some(&stack)).unwrap();
    let kafka = stack::kafka_config(&cfg, &stack);
    if let Err(e) = pipeline::wait_caught_up(&cfg, &sources, &kafka, Duration::from_secs(240)).await
    {
        panic!(
            "{e:#}\n--- cdc log:\n{}\n--- ingest log:\n{}",
            tail(&env.log("cdc")),
            tail(&env.log("ingest"))
        );
    }
    let lake = tributary_lake::Lake::new(&pipeline::lake_config(&cfg)).unwrap();
    let session = tributary_query::Session::new(lake).await.unwrap();
    let checks = pipeline::compare_silver(&sources, &session).await.unwrap();
    let mut total = 0;
    for c in &checks {
        assert!(
            c.equal(),
            "silver.{} differs from the source: {c:?}",
            c.table
        );
        total += c.source_rows;
    }
    assert!(total > 0, "the comparison compared nothing");
    for (table, (n, distinct)) in pipeline::bronze_duplicates(&session).await.unwrap() {
        assert_eq!(n, distinct, "bronze.{table} has duplicate event_ids");
    }
    assert_no_gaps(&session).await;
}

/// Every streamed transaction is complete in bronze: per (source, shard,
/// commit LSN) the ordinals are exactly 1..n across all tables.
async fn assert_no_gaps(session: &tributary_query::Session) {
    let parts: Vec<String> = tributary_model::domain::TABLES
        .iter()
        .map(|t| {
            format!(
                "SELECT '{}' AS db, shard, lsn, ordinal FROM bronze.{} WHERE op <> 'r' AND ordinal > 0",
                t.db.name(),
                t.name
            )
        })
        .collect();
    let sql = format!(
        "SELECT count(*) FROM (SELECT db, shard, lsn, count(*) AS n, count(DISTINCT ordinal) AS d, max(ordinal) AS m \
         FROM ({}) GROUP BY db, shard, lsn) WHERE n <> m OR d <> n",
        parts.join(" UNION ALL ")
    );
    let batches = session.sql(&sql).await.unwrap();
    let bad = tributary_query_count(&batches);
    assert_eq!(
        bad, 0,
        "{bad} transactions in bronze have missing or doubled changes"
    );
}

/// The test's load reached the lake through the stream, not only the snapshot.
async fn assert_streamed(env: &Env) {
    let lake = tributary_lake::Lake::new(&pipeline::lake_config(&env.config())).unwrap();
    let session = tributary_query::Session::new(lake).await.unwrap();
    let batches = session
        .sql("SELECT count(*) FROM bronze.orders WHERE op <> 'r'")
        .await
        .unwrap();
    assert!(
        tributary_query_count(&batches) > 0,
        "no streamed changes in bronze.orders"
    );
}

fn tributary_query_count(batches: &[arrow::array::RecordBatch]) -> i64 {
    let c = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

async fn pipeline_connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

fn up(env: &Env) {
    let out = env.run(&["up"]);
    assert!(
        out.status.success(),
        "tributary up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_changes_flow_to_silver_and_gold_reconciles() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new();
    up(&env);
    // `up` is idempotent.
    up(&env);
    env.spawn("oltp", &["oltp", "serve"]);
    env.wait_http().await;
    // Data written before the reader starts arrives through the snapshot.
    scripted_changes(&env.url()).await;
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    env.spawn("cdc", &["cdc", "run", "--metrics", &metrics_addr]);
    env.spawn("ingest", &["lake", "ingest"]);
    let url = env.url();
    // Writes that bypass the API are captured too, including a primary-key
    // change (a delete of the old row plus an insert of the new one).
    let lonely = post(
        &reqwest::Client::new(),
        format!("{url}/customers"),
        json!({"email": "lonely@example.com", "name": "Lonely", "region": "eu", "country": "NL",
               "city": "Delft", "address": "Street 2", "lat": 52.1, "lon": 4.4}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let stack_state = StackState::load(&env.config().state_dir).unwrap().unwrap();
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
    let products = reqwest::get(format!("{url}/products"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        products.contains("E2E-0"),
        "the restarted service lost the catalog: {products}"
    );
    let load = env.run(&[
        "load",
        "--rate",
        "30",
        "--duration",
        "15s",
        "--url",
        &url,
        "--seed",
        "7",
    ]);
    assert!(
        load.status.success(),
        "load failed: {}",
        String::from_utf8_lossy(&load.stderr)
    );
    env.assert_running();
    assert_lake_equals_source(&env).await;
    assert_streamed(&env).await;
    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tributary_cdc_events_total{table=\"orders\",op=\"c\"}"),
        "reader metrics lack order inserts:\n{metrics}"
    );

    // Gold reconciles with the source shards.
    let out = env.run(&["etl", "run", "marts"]);
    assert!(
        out.status.success(),
        "etl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = env.config();
    let stack = StackState::load(&cfg.state_dir).unwrap().unwrap();
    let sources = Sources::resolve(&cfg, Some(&stack)).unwrap();
    let lake = tributary_lake::Lake::new(&pipeline::lake_config(&cfg)).unwrap();
    let session = tributary_query::Session::new(lake).await.unwrap();
    let r = tributary::demo::reconcile(&sources, &session)
        .await
        .unwrap();
    assert!(r.revenue_source > 0);
    assert_eq!(
        r.revenue_gold, r.revenue_source,
        "gold revenue differs from the shards"
    );
    assert!(r.balanced(), "reconciliation is off");

    // The console answers one-shot queries in every format.
    let out = env.run(&[
        "sql",
        "-e",
        "SELECT count(*) AS n FROM gold.fct_order_line",
        "--format",
        "json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"n\""));
    let out = env.run(&["sql", "-e", "SELEC nonsense"]);
    assert!(!out.status.success());
    let out = env.run(&["status", "--json"]);
    assert!(out.status.success());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["healthy"] == true),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_reader_and_ingester_loses_and_doubles_nothing() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::new();
    up(&env);
    env.spawn("oltp", &["oltp", "serve"]);
    env.wait_http().await;
    env.spawn("cdc", &["cdc", "run"]);
    env.spawn("ingest", &["lake", "ingest"]);
    let url = env.url();
    let mut load = env
        .command(&[
            "load",
            "--rate",
            "40",
            "--duration",
            "25s",
            "--url",
            &url,
            "--seed",
            "11",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.kill9("cdc");
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.kill9("ingest");
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.spawn("cdc", &["cdc", "run"]);
    env.spawn("ingest", &["lake", "ingest"]);
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
    let _serial = SERIAL.lock().await;
    let mut env = Env::new();
    up(&env);
    env.spawn("oltp", &["oltp", "serve"]);
    env.wait_http().await;
    scripted_changes(&env.url()).await;
    env.spawn("cdc", &["cdc", "run"]);
    env.spawn("ingest", &["lake", "ingest"]);
    assert_lake_equals_source(&env).await;
    env.kill9("cdc");
    // The reader's state now looks like a snapshot that never completed, and
    // rows disappear while no reader runs: the replacement snapshot must
    // clear them from silver, not only add the rows that remain.
    let stack_state = StackState::load(&env.config().state_dir).unwrap().unwrap();
    let mut deleted = 0;
    for pg in stack_state.all_pg() {
        let client = pipeline_connect(&pg.dsn()).await;
        client
            .execute("DELETE FROM tributary_cdc.snapshots", &[])
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
        env.log("cdc").contains("snapshot did not complete before"),
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
