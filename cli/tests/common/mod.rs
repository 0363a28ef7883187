//! Shared by the end-to-end test binaries: a stack of its own per test in
//! a temporary folder, the `tributary` binary run as separate processes (so
//! tests can SIGKILL them), and the check that the lake equals the source.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tributary::config::{self, Config};
use tributary::pipeline::{self, Sources};
use tributary::stack::{self, StackState};

/// Stacks are heavy for a 2-core machine: end-to-end tests take turns.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tributary")
}

/// A stack of its own under a temporary state folder.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub oltp_port: u16,
    pub children: Vec<(String, Child)>,
    /// Settings of this test on top of the defaults (`TRIBUTARY__...`).
    pub extra: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Env {
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
            extra: vec![],
        }
    }

    pub fn vars(&self) -> Vec<(String, String)> {
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
        .into_iter()
        .chain(self.extra.iter().cloned())
        .collect()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config(&self) -> Config {
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| !k.starts_with("TRIBUTARY__"))
            .collect();
        env.extend(self.vars());
        config::load_from_env(&env).unwrap()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .envs(self.vars())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = self
            .command(args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    pub fn kill9(&mut self, name: &str) {
        let i = self.children.iter().position(|(n, _)| n == name).unwrap();
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn assert_running(&mut self) {
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

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.oltp_port)
    }

    pub async fn wait_http(&mut self) {
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

pub async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let r = client.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url} -> {status}: {v}");
    v
}

pub async fn assert_lake_equals_source(env: &Env) {
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
pub async fn assert_no_gaps(session: &tributary_query::Session) {
    let mut parts: Vec<String> = Vec::new();
    for t in tributary_model::domain::TABLES {
        // Tables a test never wrote to have no bronze table.
        if session
            .sql(&format!("SELECT 1 FROM bronze.{} LIMIT 0", t.name))
            .await
            .is_err()
        {
            continue;
        }
        parts.push(format!(
            // Snapshot events (reads, and the truncates that precede a
            // replacing copy) are not transactions of the source.
            "SELECT '{}' AS db, shard, lsn, ordinal FROM bronze.{} WHERE op <> 'r' AND ordinal > 0 AND event_id NOT LIKE '%/r%'",
            t.db.name(),
            t.name
        ));
    }
    assert!(!parts.is_empty(), "no bronze tables at all");
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

pub fn tributary_query_count(batches: &[arrow::array::RecordBatch]) -> i64 {
    let c = arrow::compute::cast(batches[0].column(0), &arrow::datatypes::DataType::Int64).unwrap();
    c.as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .unwrap()
        .value(0)
}

pub async fn pipeline_connect(dsn: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

pub fn tail(s: &str) -> String {
    s.lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn up(env: &Env) {
    let out = env.run(&["up"]);
    assert!(
        out.status.success(),
        "tributary up failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An s3s-fs server on a free loopback port, serving a temporary folder
/// with one bucket; killed on drop. `scripts/bootstrap.sh` installs it.
pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    child: Child,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "tributary-test";
    pub const SECRET_KEY: &'static str = "tributary-test-secret";

    pub async fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("tributary-s3-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        let bucket = "lake".to_string();
        // s3s-fs serves each folder of its root as a bucket.
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::create_dir(dir.path().join("data").join(&bucket)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("s3s-fs.log")).unwrap();
        let child = Command::new(s3s_fs_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", Self::ACCESS_KEY])
            .args(["--secret-key", Self::SECRET_KEY])
            .arg(dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting s3s-fs (run scripts/bootstrap.sh): {e}"));
        let mut server = S3Server {
            dir,
            port,
            bucket,
            child,
        };
        server.wait_ready().await;
        server
    }

    /// Until the server answers HTTP at all (an unsigned request gets an
    /// error status, which is an answer).
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if reqwest::get(self.endpoint()).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("s3s-fs exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "s3s-fs did not answer:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("s3s-fs.log")).unwrap_or_default()
    }

    /// The folder that holds the bucket's objects.
    pub fn bucket_dir(&self) -> PathBuf {
        self.dir.path().join("data").join(&self.bucket)
    }

    /// Settings that put the lake at `s3://<bucket>/<prefix>` on this server,
    /// for `Env::extra`.
    pub fn lake_vars(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                "TRIBUTARY__LAKE__ROOT".into(),
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("TRIBUTARY__LAKE__S3__ENDPOINT".into(), self.endpoint()),
            (
                "TRIBUTARY__LAKE__S3__ACCESS_KEY_ID".into(),
                Self::ACCESS_KEY.into(),
            ),
            (
                "TRIBUTARY__LAKE__S3__SECRET_ACCESS_KEY".into(),
                Self::SECRET_KEY.into(),
            ),
            ("TRIBUTARY__LAKE__S3__ALLOW_HTTP".into(), "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `s3s-fs` on PATH, else where `cargo install` puts it.
fn s3s_fs_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs")
    })
}

/// Produces one raw message to the change topic of `table` on the stack's
/// broker (as a broken or foreign producer would) and returns where it
/// landed: (topic, partition, offset).
pub async fn produce_raw(env: &Env, table: &str, key: &[u8], payload: &[u8]) -> (String, i32, i64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let cfg = env.config();
    let stack = StackState::load(&cfg.state_dir).unwrap().unwrap();
    let kafka = stack::kafka_config(&cfg, &stack);
    let spec = tributary_model::domain::TABLES
        .iter()
        .find(|t| t.name == table)
        .unwrap();
    let topic = tributary_model::domain::topic_of(&kafka.topic_prefix, spec);
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.brokers)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key(key).payload(payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    (topic, delivery.partition, delivery.offset)
}
