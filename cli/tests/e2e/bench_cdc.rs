//! `tributary bench cdc` end to end on a small load: both sides must have
//! processed exactly the changes written, and the bench must clean up.

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::*;

const ROWS: u64 = 2_000;

fn bench(env: &Env, recv_out: &Path) -> Value {
    // Only the state folder and the shards: the bench's own settings are
    // what it measures with.
    let out = Command::new(bin())
        .args([
            "bench",
            "cdc",
            "--rows",
            &ROWS.to_string(),
            "--runs",
            "2",
            "--json",
        ])
        .arg("--recvlogical-output")
        .arg(recv_out)
        .env(
            "TRIBUTARY__STATE_DIR",
            env.state_dir().display().to_string(),
        )
        .envs(env.extra.iter().cloned())
        .env("TRIBUTARY_LOG", "warn")
        .current_dir(env.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_success(&out, "bench cdc");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench output is not JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_cdc_counts_every_change_and_cleans_up() {
    let mut env = Env::stack().await;
    // One order shard is enough: the bench uses shard 0's cluster.
    env.extra
        .push(("TRIBUTARY__STACK__SHARDS".into(), "1".into()));
    let recv_out = env.dir.path().join("recvlogical.out");
    let report = bench(&env, &recv_out);
    let changes = ROWS + ROWS / 2;
    assert_eq!(report["changes"], changes, "{report:#}");
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report:#}");
    for run in runs {
        // pg_recvlogical's output, decoded: every insert and update once.
        assert_eq!(run["recvlogical_changes"], changes, "{report:#}");
        // The broker holds exactly one event per change and per row.
        assert_eq!(run["reader_events"], changes, "{report:#}");
        assert_eq!(run["snapshot_events"], ROWS, "{report:#}");
        assert_eq!(run["copy_rows"], ROWS, "{report:#}");
        for key in [
            "recvlogical_secs",
            "reader_secs",
            "copy_secs",
            "snapshot_secs",
        ] {
            assert!(run[key].as_f64().unwrap() > 0.0, "{key}: {report:#}");
        }
    }
    assert_eq!(report["broker"]["messages"], changes, "{report:#}");
    let summary = &report["summary"];
    for key in [
        "streaming_ratio",
        "snapshot_ratio",
        "reader_changes_per_sec",
    ] {
        assert!(summary[key].as_f64().unwrap() > 0.0, "{key}: {report:#}");
    }
    assert!(
        summary["reader_peak_rss_kib"].as_u64().unwrap() > 0,
        "{report:#}"
    );

    // Nothing of the bench is left: database, slots, topics.
    let state = env.stack_state();
    let client = pipeline_connect(&state.shards[0].dsn()).await;
    let left: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pg_database WHERE datname = 'tributary_bench')
                  + (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'tributary_bench%')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "the bench left its database or slots behind");
    let kafka = env.kafka();
    let topics = tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let consumer: BaseConsumer = tributary_kafka::client_config(&kafka).create().unwrap();
        let md = consumer
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .unwrap();
        md.topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| t.starts_with("bench."))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(topics.is_empty(), "bench topics left: {topics:?}");
}
