//! The wire server driven by real clients: `psql` and Python's psycopg.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tributary_query::SqlConfig;
use tributary_query::wire::Server;

use super::{append, orders, orders_lake};

const PASSWORD: &str = "s3cret-pw";

/// A server on a free port over a lake with `silver.orders` (two versions)
/// and `gold.daily`; stopped on drop.
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(configure: impl FnOnce(&mut SqlConfig, &Path)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 1050), (2, "pending", 200)]).await;
    append(&lake, "silver", "orders", orders(&[(3, "paid", 150)])).await;
    append(&lake, "gold", "daily", orders(&[(9, "x", 1)])).await;
    let mut config = SqlConfig {
        listen: "127.0.0.1:0".into(),
        password: Some(PASSWORD.to_string().into()),
        statement_timeout_ms: 20_000,
        ..SqlConfig::default()
    };
    configure(&mut config, dir.path());
    let session = tributary_query::Session::with_config(lake, &config)
        .await
        .unwrap();
    let server = Server::bind(session, &config, None).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Running {
        addr,
        stop,
        _dir: dir,
    }
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// psql connecting to the server at `addr` (no psqlrc, unaligned output),
/// its output captured.
fn psql_command(addr: SocketAddr, password: &str, sslmode: &str) -> Command {
    let mut command = Command::new("psql");
    command
        .arg(format!(
            "host=127.0.0.1 port={} user=tributary dbname=lake sslmode={sslmode}",
            addr.port()
        ))
        .args(["-X", "-A"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs psql (unaligned, tuples only unless `-c` says otherwise) with
/// `args` and `stdin` as the script.
async fn psql(
    addr: SocketAddr,
    password: &str,
    sslmode: &str,
    args: &[&str],
    stdin: &str,
) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = psql_command(addr, password, sslmode)
        .args(["-v", "ON_ERROR_STOP=0"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("psql is installed (scripts/bootstrap.sh)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("psql finished")
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A wrong password is refused, with `sslmode`.
async fn assert_wrong_password_refused(addr: SocketAddr, sslmode: &str) {
    let out = psql(addr, "wrong", sslmode, &["-t"], "select 1;\n").await;
    assert!(
        !out.ok
            && out
                .stderr
                .to_lowercase()
                .contains("password authentication failed"),
        "{}",
        out.stderr
    );
}

/// Runs `script` through psql with the right password, without TLS,
/// printing tuples only.
async fn tuples(addr: SocketAddr, script: &str) -> Output {
    psql(addr, PASSWORD, "disable", &["-t"], script).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_queries_lists_and_describes_tables() {
    let server = start(|_, _| {}).await;
    let out = tuples(
        server.addr,
        "select id, status, total, created_at from silver.orders order by id;\n\
         select count(*) from gold.daily;\n",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "1|paid|10.50|2024-03-01 10:01:00+00\n\
         2|pending|2.00|2024-03-01 10:02:00+00\n\
         3|paid|1.50|2024-03-01 10:03:00+00\n\
         1\n"
    );

    let out = psql(server.addr, PASSWORD, "disable", &[], "\\dt\n\\dn\n").await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(
        out.stdout.contains("Schema|Name|Type|Owner\ngold|daily|table|tributary\nsilver|orders|table|tributary\n(2 rows)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("bronze|tributary\ngold|tributary\nsilver|tributary"),
        "{}",
        out.stdout
    );

    let out = psql(
        server.addr,
        PASSWORD,
        "disable",
        &[],
        "\\d silver.orders\n\\d orders\n\\d nope\n",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    let described = "Table \"silver.orders\"\nColumn|Type|Collation|Nullable|Default\n\
         id|bigint||not null|\nstatus|text|||\ntotal|numeric(12,2)|||\n\
         created_at|timestamp with time zone|||\n_shard|integer||not null|\n";
    assert!(out.stdout.starts_with(described), "{}", out.stdout);
    // Unqualified, the table is found through the search path too.
    assert_eq!(out.stdout.matches(described).count(), 2, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("Did not find any relation named \"nope\""),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_describes_in_detail_expands_and_copies_out() {
    let server = start(|_, _| {}).await;
    // `\d+`: storage and the rest from pg_catalog; the footers (policies,
    // statistics, publications) find nothing, as for any Delta table.
    let out = psql(
        server.addr,
        PASSWORD,
        "disable",
        &[],
        "\\d+ silver.orders\n",
    )
    .await;
    assert!(out.ok && out.stderr.is_empty(), "{}", out.stderr);
    assert!(
        out.stdout.starts_with(
            "Table \"silver.orders\"\n\
             Column|Type|Collation|Nullable|Default|Storage|Compression|Stats target|Description\n\
             id|bigint||not null||plain|||\nstatus|text||||extended|||\n"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Access method: delta"),
        "{}",
        out.stdout
    );

    // `\x`: one line per column.
    let out = tuples(
        server.addr,
        "\\x\nselect id, status from orders where id = 2;\n",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.ends_with("id|2\nstatus|pending\n"),
        "{}",
        out.stdout
    );

    // `\copy (select ...) to` a file, as CSV with a header and in COPY's
    // text format; psql reports the rows, not the header.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("orders.csv");
    let text = dir.path().join("orders.txt");
    let out = psql(
        server.addr,
        PASSWORD,
        "disable",
        &[],
        &format!(
            "\\copy (select id, status, total, created_at from silver.orders order by id) to '{}' with csv header\n\
             \\copy (select id, status, null::text as missing, 'a\tb' as tab from orders where id = 1) to '{}'\n",
            csv.display(),
            text.display()
        ),
    )
    .await;
    assert!(out.ok && out.stderr.is_empty(), "{}", out.stderr);
    assert_eq!(out.stdout, "COPY 3\nCOPY 1\n");
    assert_eq!(
        std::fs::read_to_string(&csv).unwrap(),
        "id,status,total,created_at\n1,paid,10.50,2024-03-01 10:01:00+00\n\
         2,pending,2.00,2024-03-01 10:02:00+00\n3,paid,1.50,2024-03-01 10:03:00+00\n"
    );
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "1\tpaid\t\\N\ta\\tb\n"
    );

    // COPY FROM writes: refused like any write, and the session goes on.
    let out = tuples(server.addr, "copy orders from stdin;\nselect 'on';\n").await;
    assert!(
        out.stderr
            .contains("cannot execute COPY FROM in a read-only transaction"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "on\n", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_errors_and_the_connection_and_server_stay_up() {
    let server = start(|_, _| {}).await;
    let out = tuples(
        server.addr,
        "selec 1;\nselect nope from orders;\nselect 40 + 2;\n",
    )
    .await;
    assert!(out.stdout.contains("42"), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("ERROR:  query failed"),
        "{}",
        out.stderr
    );
    // The parser's position reaches psql, which draws its own caret.
    assert!(
        out.stderr.contains("LINE 1: selec 1;\n        ^"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("nope"), "{}", out.stderr);

    assert_wrong_password_refused(server.addr, "disable").await;

    // Still serving.
    let out = tuples(server.addr, "select 'up';\n").await;
    assert_eq!(out.stdout, "up\n", "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_ctrl_c_cancels_and_the_timeout_stops_long_queries() {
    let server = start(|c, _| c.statement_timeout_ms = 3_000).await;
    // The timeout.
    let started = Instant::now();
    let out = tuples(
        server.addr,
        "select sum(value) from range(1000000000000);\nselect 'after';\n",
    )
    .await;
    let took = started.elapsed();
    assert!(out.stderr.contains("statement timeout"), "{}", out.stderr);
    assert!(out.stdout.contains("after"), "{}", out.stdout);
    assert!(took < Duration::from_secs(15), "{took:?}");

    // Ctrl-C: SIGINT to psql makes it send a CancelRequest.
    let child = psql_command(server.addr, PASSWORD, "disable")
        .args(["-t", "-c", "select sum(value) from range(1000000000000)"])
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    let pid = child.id().unwrap().to_string();
    let signalled = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(signalled.success());
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("psql returned after the cancel")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_over_tls() {
    let server = start(|c, dir| {
        let cert = dir.join("server.crt");
        let key = dir.join("server.key");
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
    })
    .await;
    let out = psql(
        server.addr,
        PASSWORD,
        "require",
        &["-t"],
        "\\conninfo\nselect count(*) from orders;\n",
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("SSL connection (protocol: TLSv1.3"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.ends_with("3\n"), "{}", out.stdout);
    // Without TLS it still works (sslmode=disable), with it wrong passwords still fail.
    assert_wrong_password_refused(server.addr, "require").await;
}

/// Runs a client script (`program` with `args`, then the server's port and
/// password) against a fresh server; it prints one line per check and
/// `ok N` last. Returns N after asserting that it exited cleanly.
async fn client_checks(what: &str, program: &str, args: &[&str], envs: &[(&str, String)]) -> usize {
    let server = start(|_, _| {}).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wire");
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(program)
            .current_dir(&dir)
            .args(args)
            .arg(server.addr.port().to_string())
            .arg(PASSWORD)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("the {what} client finished within 120 s"))
    .unwrap_or_else(|e| panic!("{program} runs (scripts/bootstrap.sh installs it): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {what} client failed (installed by scripts/bootstrap.sh):\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("ok "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the {what} client printed no `ok N`:\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_runs_parameters_prepared_statements_and_cancels() {
    assert_eq!(
        client_checks("psycopg", "python3", &["client.py"], &[]).await,
        32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_speaks_binary_prepares_and_introspects_types() {
    assert_eq!(
        client_checks("asyncpg", "python3", &["asyncpg_client.py"], &[]).await,
        17
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_inspects_the_catalog_and_pandas_reads_typed_frames() {
    assert_eq!(
        client_checks("SQLAlchemy", "python3", &["sqlalchemy_client.py"], &[]).await,
        17
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_reads_database_metadata_and_runs_prepared_statements() {
    assert_eq!(
        client_checks(
            "JDBC",
            "java",
            &["-cp", "/usr/share/java/postgresql.jar", "JdbcClient.java"],
            &[]
        )
        .await,
        19
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_runs_parameterised_and_named_queries() {
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        client_checks(
            "node-postgres",
            "node",
            &["node_client.js"],
            &[(
                "NODE_PATH",
                format!("{home}/.cache/tributary/node/node_modules")
            )]
        )
        .await,
        13
    );
}

/// A statement prepared once and run again after the lake moved reads the
/// new version (PostgreSQL plans a prepared statement's run on the data at
/// execution), and a repeated simple query answered from the result cache
/// follows a new version too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_and_repeated_queries_see_new_versions() {
    let dir = tempfile::tempdir().unwrap();
    let lake = orders_lake(&dir, &[(1, "paid", 1050), (2, "pending", 200)]).await;
    let config = SqlConfig {
        listen: "127.0.0.1:0".into(),
        password: Some(PASSWORD.to_string().into()),
        ..SqlConfig::default()
    };
    let session = tributary_query::Session::with_config(lake.clone(), &config)
        .await
        .unwrap();
    let server = Server::bind(session, &config, None).await.unwrap();
    let port = server.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    let _stop = stop.drop_guard();
    let (client, connection) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=tributary password={PASSWORD} dbname=lake"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let simple = async |sql: &str| -> String {
        let messages = client.simple_query(sql).await.unwrap();
        messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap()
    };
    let prepared = client
        .prepare("SELECT count(*) FROM silver.orders WHERE id > $1")
        .await
        .unwrap();
    let count = async || -> i64 { client.query_one(&prepared, &[&0_i64]).await.unwrap().get(0) };
    assert_eq!(count().await, 2);
    assert_eq!(simple("SELECT count(*) FROM silver.orders").await, "2");
    assert_eq!(simple("SELECT count(*) FROM silver.orders").await, "2");

    append(&lake, "silver", "orders", orders(&[(3, "paid", 150)])).await;
    assert_eq!(
        count().await,
        3,
        "the prepared statement reads the new version"
    );
    assert_eq!(count().await, 3);
    assert_eq!(simple("SELECT count(*) FROM silver.orders").await, "3");

    // A new column: the prepared `SELECT *` cannot change its result type,
    // and says so as PostgreSQL does.
    let star = client.prepare("SELECT * FROM gold.wide").await;
    assert!(star.is_err(), "gold.wide does not exist yet");
    append(&lake, "gold", "wide", orders(&[(1, "a", 1)])).await;
    let star = client.prepare("SELECT * FROM gold.wide").await.unwrap();
    assert_eq!(client.query(&star, &[]).await.unwrap().len(), 1);
    let wider = {
        let b = orders(&[(2, "b", 2)]);
        let mut fields: Vec<arrow::datatypes::FieldRef> =
            b.schema().fields().iter().cloned().collect();
        fields.push(std::sync::Arc::new(arrow::datatypes::Field::new(
            "note",
            arrow::datatypes::DataType::Utf8,
            true,
        )));
        let mut columns = b.columns().to_vec();
        columns.push(std::sync::Arc::new(arrow::array::StringArray::from(vec![
            Some("n"),
        ])));
        arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
            columns,
        )
        .unwrap()
    };
    super::scratch_lake::table(&lake, "gold", "wide")
        .await
        .write(vec![wider])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
        .await
        .unwrap();
    let err = client.query(&star, &[]).await.unwrap_err();
    let db = err.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(
        db.message().contains("must not change result type"),
        "{db:?}"
    );
    // Prepared again, it sees the new column.
    let star = client.prepare("SELECT * FROM gold.wide").await.unwrap();
    assert_eq!(star.columns().len(), 6);
}
