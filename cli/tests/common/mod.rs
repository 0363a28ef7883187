//! Shared by the end-to-end tests: a stack of its own per test in a
//! temporary folder, the `tributary` binary run as separate processes (so
//! tests can SIGKILL them), and the check that the lake equals the source.
//!
//! Tests that start a stack (PostgreSQL clusters, a broker, the pipeline's
//! processes) take turns: two at once overload a 2-core machine and its
//! timing assertions. [`Env::stack`] waits for the turn and holds it for the
//! test's life; [`Env::new`] is for tests that start no stack and need no
//! turn. Under `cargo test` (one process, a thread per test) the turn is a
//! lock here; under nextest (a process per test) it is the `stack` test
//! group of `.config/nextest.toml`, which lists the tests that need none.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use tributary_kafka::KafkaConfig;
use tributary_stack::config::{self, Config};
use tributary_stack::{PgInstance, Platform, StackState, checks};

/// Held by the test whose stack runs (see the module documentation).
static STACK_TURN: Mutex<()> = Mutex::const_new(());

/// The binary under test. `TRIBUTARY_TEST_BIN` points the tests at another
/// build of it: in a target folder shared by several checkouts, another
/// checkout's build replaces `target/debug/tributary` under a running test.
pub fn bin() -> String {
    std::env::var("TRIBUTARY_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tributary").into())
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A state folder of its own under a temporary folder; with a stack when
/// made by [`Env::stack`].
pub struct Env {
    pub dir: tempfile::TempDir,
    pub oltp_port: u16,
    pub children: Vec<(String, Child)>,
    /// Settings of this test on top of the defaults (`TRIBUTARY__...`).
    pub extra: Vec<(String, String)>,
    /// Last, so the turn passes on only after the stack is gone.
    turn: Option<MutexGuard<'static, ()>>,
}

impl Env {
    /// For a test that starts no stack: it does not wait for the turn.
    pub fn new() -> Env {
        Env::with_turn(None)
    }

    /// For a test that starts a stack: waits for its turn.
    pub async fn stack() -> Env {
        Env::with_turn(Some(STACK_TURN.lock().await))
    }

    /// [`Env::stack`] for a test outside an async runtime.
    pub fn stack_blocking() -> Env {
        Env::with_turn(Some(STACK_TURN.blocking_lock()))
    }

    fn with_turn(turn: Option<MutexGuard<'static, ()>>) -> Env {
        let dir = tempfile::Builder::new()
            .prefix("tributary-e2e-")
            .tempdir_in(std::env::temp_dir())
            .unwrap();
        Env {
            dir,
            oltp_port: free_port(),
            children: vec![],
            extra: vec![],
            turn,
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
            // Standbys only where a test is about them (`e2e::ha`): each
            // would add a base backup and a supervisor to every stack.
            ("TRIBUTARY__STACK__STANDBYS".into(), "false".into()),
            // The web console only where a test is about it (`e2e::ui`):
            // its default port may be taken by a user's own stack.
            ("TRIBUTARY__UI__ENABLED".into(), "false".into()),
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

    /// Runs a command that must succeed; returns its stdout.
    pub fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, &format!("tributary {}", args.join(" ")));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn spawn(&mut self, name: &str, args: &[&str]) {
        let child = self.command(args);
        self.spawn_command(name, child);
    }

    /// Starts `command` as the child `name`, its output in `<name>.log`.
    pub fn spawn_command(&mut self, name: &str, mut command: Command) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let child = command
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

    pub fn pid(&self, name: &str) -> u32 {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no child {name}"))
            .1
            .id()
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
        let url = format!("{}/healthz", self.url());
        self.wait_for("the order API", Duration::from_secs(60), || async {
            reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    /// Polls `check` until it holds, failing the test after `timeout` or
    /// when a child exits.
    pub async fn wait_for<F, Fut>(&mut self, what: &str, timeout: Duration, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        while !check().await {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {timeout:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `check` until it holds; fails after `secs` or when a child
    /// exited.
    pub async fn until(&mut self, what: &str, secs: u64, check: impl AsyncFn(&Env) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !check(self).await {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {secs} s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The end of every child's log, for a failure message: the newest
    /// child first (usually the process under test; CI shows a failure's
    /// first lines), the order service last.
    pub fn logs(&self) -> String {
        self.children
            .iter()
            .rev()
            .map(|(name, _)| format!("--- {name} log:\n{}", tail(&self.log(name))))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `tributary up`: the stack, in a test that has the turn.
    pub fn up(&self) {
        assert!(
            self.turn.is_some(),
            "a test that starts a stack takes its turn: Env::stack()"
        );
        self.run_ok(&["up"]);
    }

    /// The stack and the order service (which creates the tables).
    pub async fn start(&mut self) {
        self.up();
        for attempt in 1..=3 {
            self.spawn("oltp", &["oltp", "serve"]);
            if self.oltp_up().await {
                return;
            }
            // The port was free when chosen, then another process took it
            // (an outgoing connection's ephemeral port, say): choose again.
            let log = self.log("oltp");
            assert!(
                attempt < 3 && log.contains("Address already in use"),
                "the order service exited:\n{log}"
            );
            self.oltp_port = free_port();
        }
    }

    /// Waits for the order service's `/healthz`; false when it exited.
    async fn oltp_up(&mut self) -> bool {
        let url = format!("{}/healthz", self.url());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return true;
            }
            let i = self
                .children
                .iter()
                .position(|(n, _)| n == "oltp")
                .expect("spawned");
            if self.children[i].1.try_wait().unwrap().is_some() {
                self.children.remove(i);
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "the order API did not answer within 60 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The CDC reader and the ingester.
    pub fn start_pipeline(&mut self) {
        self.spawn("cdc", &["cdc", "run"]);
        self.spawn("ingest", &["lake", "ingest"]);
    }

    /// `tributary load` against the order service, to its end.
    pub fn load(&self, rate: u32, secs: u64, seed: u64) {
        let out = self.load_command(rate, secs, seed).output().unwrap();
        assert_success(&out, "load");
    }

    /// [`Env::load`] in the background.
    pub fn spawn_load(&self, rate: u32, secs: u64, seed: u64) -> Child {
        self.load_command(rate, secs, seed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn load_command(&self, rate: u32, secs: u64, seed: u64) -> Command {
        self.command(&[
            "load",
            "--rate",
            &rate.to_string(),
            "--duration",
            &format!("{secs}s"),
            "--url",
            &self.url(),
            "--seed",
            &seed.to_string(),
        ])
    }

    pub fn stack_state(&self) -> StackState {
        StackState::load(&self.config().state_dir)
            .unwrap()
            .expect("the test's stack is up")
    }

    /// The test's platform: its configuration resolved against its stack.
    pub fn platform(&self) -> Platform {
        Platform::load(self.config()).unwrap()
    }

    /// The stack's broker and topics.
    pub fn kafka(&self) -> KafkaConfig {
        self.platform().kafka().unwrap().clone()
    }

    /// The test's lake settings.
    pub fn lake_config(&self) -> tributary_lake::LakeConfig {
        self.platform().lake_config().clone()
    }

    /// An SQL session over the test's lake.
    pub async fn session(&self) -> tributary_query::Session {
        let lake = tributary_lake::Lake::new(&self.lake_config()).unwrap();
        tributary_query::Session::new(lake).await.unwrap()
    }

    /// The one number `sql` answers over the lake.
    pub async fn lake_count(&self, sql: &str) -> i64 {
        tributary_query_count(&self.session().await.sql(sql).await.unwrap())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(cfg) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.config())) {
            let _ = tributary_stack::down(&cfg, true);
        }
    }
}

/// Fails the test, with both outputs, unless `out` is a success.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let r = client.post(&url).json(&body).send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "POST {url} -> {status}: {v}");
    v
}

/// The body of a GET that must succeed.
pub async fn http_text(url: &str) -> String {
    let r = reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert!(r.status().is_success(), "GET {url} -> {}", r.status());
    r.text().await.unwrap()
}

/// The value of the sample `name{labels}` in Prometheus text, whatever the
/// order of its labels.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let mut found: Vec<(&str, &str)> = rest
            .split(',')
            .filter(|l| !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let mut wanted = labels.to_vec();
        found.sort_unstable();
        wanted.sort_unstable();
        (n == name && found == wanted)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

pub async fn assert_lake_equals_source(env: &Env) {
    let platform = env.platform();
    if let Err(e) = checks::wait_caught_up(&platform, Duration::from_secs(240)).await {
        panic!("{e:#}\n{}", env.logs());
    }
    let session = env.session().await;
    let sources = platform.sources().unwrap();
    let checks = checks::compare_silver(sources, &session).await.unwrap();
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
    for (table, (n, distinct)) in checks::bronze_duplicates(&session).await.unwrap() {
        assert_eq!(n, distinct, "bronze.{table} has duplicate event_ids");
    }
    // Every streamed transaction is complete in bronze.
    let (bad, detail) = incomplete_transactions(&session).await;
    assert_eq!(
        bad, 0,
        "{bad} transactions in bronze have missing or doubled changes:\n{detail}"
    );
}

/// How many streamed transactions miss or double changes in bronze (per
/// source, shard and commit LSN the ordinals must be exactly 1..n across
/// all tables), and the changes of the first few.
pub async fn incomplete_transactions(session: &tributary_query::Session) -> (i64, String) {
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
            "SELECT '{}' AS db, '{}' AS tbl, shard, lsn, ordinal, event_id, op FROM bronze.{} WHERE op <> 'r' AND ordinal > 0 AND event_id NOT LIKE '%/r%'",
            t.db.name(),
            t.name,
            t.name
        ));
    }
    assert!(!parts.is_empty(), "no bronze tables at all");
    let all = parts.join(" UNION ALL ");
    let bad_groups = format!(
        "SELECT db, shard, lsn, count(*) AS n, count(DISTINCT ordinal) AS d, max(ordinal) AS m \
         FROM ({all}) GROUP BY db, shard, lsn HAVING count(*) <> max(ordinal) OR count(DISTINCT ordinal) <> count(*)"
    );
    let batches = session
        .sql(&format!("SELECT count(*) FROM ({bad_groups})"))
        .await
        .unwrap();
    let bad = tributary_query_count(&batches);
    if bad == 0 {
        return (0, String::new());
    }
    // The changes of the first few, to see what is missing or doubled.
    let detail = session
        .sql(&format!(
            "SELECT c.db, c.tbl, c.shard, c.lsn, c.ordinal, c.op, c.event_id FROM ({all}) c \
             JOIN (SELECT * FROM ({bad_groups}) ORDER BY lsn LIMIT 3) b \
             ON c.db = b.db AND c.shard = b.shard AND c.lsn = b.lsn ORDER BY c.lsn, c.ordinal LIMIT 60"
        ))
        .await
        .map_or_else(
            |e| e.to_string(),
            |b| arrow::util::pretty::pretty_format_batches(&b).unwrap().to_string(),
        );
    (bad, detail)
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

/// The first column of the one row `sql` (without parameters) returns.
pub async fn scalar<T>(client: &tokio_postgres::Client, sql: &str) -> T
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Makes `role` log in to `pg`'s cluster only with its password, over
/// SCRAM-SHA-256: a `pg_hba.conf` line above the stack's `trust` lines
/// (logical replication connections match the database lines too).
pub async fn require_scram(pg: &PgInstance, role: &str) {
    let hba = pg.data_dir.join("pg_hba.conf");
    let rest = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rest}"),
    )
    .unwrap();
    pipeline_connect(&pg.dsn())
        .await
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

/// A consumer of the stack's broker, built as tributary builds its own.
pub fn kafka_consumer(kafka: &KafkaConfig, group: &str) -> BaseConsumer {
    tributary_kafka::consumer_config(kafka, group)
        .create()
        .unwrap()
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
        let port = free_port();
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
    let kafka = env.kafka();
    let spec = tributary_model::domain::TABLES
        .iter()
        .find(|t| t.name == table)
        .unwrap();
    let topic = tributary_model::domain::topic_of(&kafka.topic_prefix, spec);
    let producer: FutureProducer = tributary_kafka::client_config(&kafka)
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
