//! Secrets never reach logs or errors: the processes of a pipeline run with
//! a password in the source DSNs (URL and key-value forms), in a Kafka
//! client property and as the SQL server's password, and commands fail on
//! connections that carry one; no output of any of them shows a password.
//! The rule is `tributary_model::dsn::describe`: a database is named
//! without its password.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

/// The password of the source role, of the Kafka client and of the SQL
/// server: distinctive, so any output that holds it is found.
const SECRET: &str = "q7Zp9x-TributarySecret-4kLm";
/// A wrong password, sent where a connection must fail: as secret.
const WRONG: &str = "w3Rt8y-TributaryWrong-2hJn";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_logs_or_errors() {
    let mut env = Env::stack().await;
    env.up();
    let stack = env.stack_state();
    // A role that logs in with the secret only, over SCRAM, on every cluster.
    for pg in stack.all_pg() {
        pipeline_connect(&pg.dsn())
            .await
            .batch_execute(&format!(
                "CREATE ROLE tributary_secret LOGIN SUPERUSER REPLICATION PASSWORD '{SECRET}'"
            ))
            .await
            .unwrap();
        require_scram(pg, "tributary_secret").await;
    }
    let url = |pg: &tributary_stack::PgInstance, password: &str| {
        format!(
            "postgres://tributary_secret:{password}@127.0.0.1:{}/{}",
            pg.port, pg.database
        )
    };
    let key_value = |port: u16, database: &str, password: &str| {
        format!(
            "host=127.0.0.1 port={port} user=tributary_secret password='{password}' dbname={database}"
        )
    };
    let sources = |shards: Vec<String>, catalog: String| {
        vec![
            (
                "TRIBUTARY__SOURCES__SHARDS".to_string(),
                serde_json::to_string(&shards).unwrap(),
            ),
            ("TRIBUTARY__SOURCES__CATALOG".to_string(), catalog),
        ]
    };
    // The pipeline reads the sources as that role, one shard's DSN as a URL.
    env.extra = sources(
        vec![
            url(&stack.shards[0], SECRET),
            key_value(stack.shards[1].port, "orders", SECRET),
        ],
        key_value(stack.catalog.port, "catalog", SECRET),
    );
    let sql_port = free_port();
    env.extra.extend([
        ("TRIBUTARY__KAFKA__BROKERS".into(), stack.broker.address()),
        // Unused by a plaintext client, which keeps working.
        (
            "TRIBUTARY__KAFKA__PROPERTIES__SASL.PASSWORD".into(),
            SECRET.into(),
        ),
        ("TRIBUTARY__SQL__PASSWORD".into(), SECRET.into()),
        (
            "TRIBUTARY__SQL__LISTEN".into(),
            format!("127.0.0.1:{sql_port}"),
        ),
        (
            "TRIBUTARY_LOG".into(),
            "info,tributary=debug,tributary_cdc=debug,tributary_lake=debug,tributary_kafka=debug,tributary_query=debug,tributary_oltp=debug".into(),
        ),
    ]);
    env.spawn("oltp", &["oltp", "serve"]);
    env.wait_http().await;
    env.start_pipeline();
    env.spawn("sql", &["sql", "serve"]);
    env.load(30, 4, 9);
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut record = |name: &str, out: &std::process::Output| {
        outputs.push((
            name.to_string(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ));
    };
    // The pipeline works with the secrets: it catches up, and silver equals
    // the source read with them.
    for args in [
        &["wait"][..],
        &["verify"],
        &["status"],
        &["status", "--json"],
    ] {
        let out = env.run(args);
        assert_success(&out, &args.join(" "));
        record(&args.join(" "), &out);
    }
    // The SQL server takes its password, and refuses another.
    let server = format!("host=127.0.0.1 port={sql_port} user=tributary dbname=lake");
    let sql_ready = format!("{server} password='{SECRET}'");
    env.wait_for("the SQL server", Duration::from_secs(60), || async {
        tokio_postgres::connect(&sql_ready, tokio_postgres::NoTls)
            .await
            .is_ok()
    })
    .await;
    let client = pipeline_connect(&sql_ready).await;
    let n: i64 = scalar(&client, "SELECT count(*) FROM silver.orders").await;
    assert!(n > 0, "silver.orders is empty");
    let refused = tokio_postgres::connect(
        &format!("{server} password='{WRONG}'"),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(refused.is_err(), "the SQL server took a wrong password");

    // Connections that fail while they carry a password: a closed port, a
    // wrong password, and a Kafka client that must authenticate.
    let closed = free_port();
    let failing: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "closed port",
            sources(
                vec![
                    format!("postgres://tributary_secret:{SECRET}@127.0.0.1:{closed}/orders"),
                    key_value(closed, "orders", SECRET),
                ],
                key_value(closed, "catalog", SECRET),
            ),
        ),
        (
            "wrong password",
            sources(
                vec![
                    url(&stack.shards[0], WRONG),
                    key_value(stack.shards[1].port, "orders", WRONG),
                ],
                key_value(stack.catalog.port, "catalog", WRONG),
            ),
        ),
        (
            "kafka sasl",
            vec![
                (
                    "TRIBUTARY__KAFKA__PROPERTIES__SECURITY.PROTOCOL".into(),
                    "SASL_PLAINTEXT".into(),
                ),
                (
                    "TRIBUTARY__KAFKA__PROPERTIES__SASL.MECHANISM".into(),
                    "PLAIN".into(),
                ),
                (
                    "TRIBUTARY__KAFKA__PROPERTIES__SASL.USERNAME".into(),
                    "tributary".into(),
                ),
            ],
        ),
    ];
    for (case, vars) in &failing {
        // Commands that end: each fails on a database it cannot reach, and
        // says why without a password. (A broker that refuses SASL fails
        // the Kafka clients that take `[kafka.properties]`.)
        let kafka = *case == "kafka sasl";
        let commands: &[&[&str]] = if kafka {
            &[&["wait", "--timeout", "10s"]]
        } else {
            &[
                &["verify"],
                &["wait", "--timeout", "10s"],
                &["cdc", "resnapshot", "orders", "--no-wait"],
            ]
        };
        for args in commands {
            let out = with_vars(env.command(args), vars).output().unwrap();
            let name = format!("{case}: {}", args.join(" "));
            assert!(kafka || !out.status.success(), "{name} succeeded");
            record(&name, &out);
        }
        // Processes that retry: what they log in a few seconds.
        let processes: &[&[&str]] = if kafka {
            &[&["cdc", "run"], &["lake", "ingest"]]
        } else {
            &[&["cdc", "run"], &["lake", "ingest"], &["oltp", "serve"]]
        };
        for args in processes {
            let name = format!("{case}: {}", args.join(" "));
            let mut command = with_vars(env.command(args), vars);
            command.env(
                "TRIBUTARY__OLTP__LISTEN",
                format!("127.0.0.1:{}", free_port()),
            );
            env.spawn_command(&name, command);
        }
    }
    tokio::time::sleep(Duration::from_secs(8)).await;
    let names: Vec<String> = env.children.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        // SIGTERM: what a process says on its way out counts too.
        let pid = nix::unistd::Pid::from_raw(env.pid(&name) as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (name, _) in &env.children {
        outputs.push((name.clone(), env.log(name)));
    }

    let mut leaks = Vec::new();
    for (name, text) in &outputs {
        for line in text.lines() {
            if line.contains(SECRET) || line.contains(WRONG) {
                leaks.push(format!(
                    "{name}: {}",
                    line.replace(SECRET, "<SECRET>").replace(WRONG, "<WRONG>")
                ));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "a password reached logs or errors ({} lines):\n{}",
        leaks.len(),
        leaks.join("\n")
    );
    // The failures said what failed, naming the database without a password.
    let failures: String = outputs
        .iter()
        .filter(|(n, _)| n.starts_with("closed port: verify"))
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(
        failures.contains(&format!("port={closed}")) || failures.contains(&format!(":{closed}")),
        "the failing connection is not named: {failures}"
    );
}

fn with_vars(mut command: Command, vars: &[(String, String)]) -> Command {
    command.envs(vars.iter().cloned());
    command
}
